// Declarations of the per-device kernels behind the torch.ops.dnmp.* ops.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common/raster_math.h"

namespace dnmp {

// Camera parameters from CPU tensors K [3, 3] and world_to_cam [4, 4] of dtype T.
template <typename T>
inline Camera<T> camera_from(const at::Tensor& K, const at::Tensor& M) {
  const auto k = K.contiguous(), m = M.contiguous();
  return camera_from_ptr<T>(k.data_ptr<T>(), m.data_ptr<T>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rasterize_fwd_cpu(const at::Tensor& verts, const at::Tensor& faces,
                                                                 const at::Tensor& intrinsics,
                                                                 const at::Tensor& world_to_cam, int64_t height,
                                                                 int64_t width, int64_t faces_per_pixel, double near,
                                                                 double far);

at::Tensor rasterize_bwd_cpu(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& intrinsics,
                             const at::Tensor& world_to_cam, const at::Tensor& pix_to_face,
                             const at::Tensor& grad_zbuf, const at::Tensor& grad_bary);

at::Tensor interpolate_fwd_cpu(const at::Tensor& attributes, const at::Tensor& faces, const at::Tensor& pix_to_face,
                               const at::Tensor& bary);

// Gradients of interpolate_fwd w.r.t. attributes and bary; with bary_grad false the bary
// gradient is not computed (zeros): a training step's cached barycentrics need none, and its
// per-fragment reductions cost more than the attributes' scatter.
std::tuple<at::Tensor, at::Tensor> interpolate_bwd_cpu(const at::Tensor& attributes, const at::Tensor& faces,
                                                       const at::Tensor& pix_to_face, const at::Tensor& bary,
                                                       const at::Tensor& grad_out, bool bary_grad);

// Fused inference shading (interpolate + encoding + MLP + compositing with early ray
// termination; see cpu/shade_cpu.cpp): rgb [N, 3] (no background), depth, mean_depth,
// transmittance [N].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shade_fwd_cpu(
    const at::Tensor& features, const at::Tensor& faces, const at::Tensor& normals, const at::Tensor& pix_to_face,
    const at::Tensor& bary, const at::Tensor& zbuf, const at::Tensor& view_dirs, at::TensorList trunk_w,
    at::TensorList trunk_b, const at::Tensor& opacity_w, const at::Tensor& opacity_b, at::TensorList color_w,
    at::TensorList color_b, int64_t feature_freqs, int64_t dir_freqs, double min_transmittance,
    double surface_opacity, bool bf16_matmul);
// Whether oneDNN has bf16 brgemm kernels on this CPU (the ops' bf16_matmul; AMX-class CPUs).
bool bf16_matmul_available();

// Positional encoding of training steps (CPU, float32; see cpu/encoding_cpu.cpp): x [N, D] ->
// [N, D (1 + 2 num_freqs)] in dnmp.model.field.positional_encoding's layout, and its backward
// (grad and encoding [N, D (1 + 2 num_freqs)] -> dx [N, D]).
at::Tensor encode_fwd_cpu(const at::Tensor& x, int64_t num_freqs);
at::Tensor encode_bwd_cpu(const at::Tensor& grad, const at::Tensor& encoded, int64_t num_freqs);

// Adam update of the rows `rows` (int64 [U], sorted, unique) of a float32 table and its two
// moments, in place, from the rows' gradient [U, ...] (see cpu/adam_rows_cpu.cpp; the
// reference is dnmp.train.row_adam._row_adam).
void adam_rows_cpu(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                   const at::Tensor& rows, const at::Tensor& grad, double step_size, double beta1, double beta2,
                   double eps);

// Input checks shared by every device (readable TypeError/ValueError messages).
void check_rasterize_args(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& intrinsics,
                          const at::Tensor& world_to_cam, int64_t height, int64_t width, int64_t faces_per_pixel,
                          double near, double far);
void check_raster_grads(const at::Tensor& verts, const at::Tensor& intrinsics, const at::Tensor& pix_to_face,
                        const at::Tensor& grad_zbuf, const at::Tensor& grad_bary);
// Index range checks (any device): faces in [0, V), pix_to_face < F.
void check_face_indices(const at::Tensor& faces, int64_t V, const char* what);
void check_pix_to_face(const at::Tensor& pix_to_face, int64_t F);
void check_interpolate_args(const at::Tensor& attributes, const at::Tensor& faces, const at::Tensor& pix_to_face,
                            const at::Tensor& bary);
// grad_out of interpolate_bwd: shape pix_to_face.shape + [C], float, on attributes' device.
void check_interpolate_grad(const at::Tensor& attributes, const at::Tensor& pix_to_face, const at::Tensor& grad_out);

// Fused background of rendering (forward only): the sky MLP of the view directions (a
// Linear/ReLU chain after their positional encoding, sigmoid) under the far field's
// shells (none when radii is empty); see cpu/shade_cpu.cpp. rgb [N, 3].
at::Tensor background_fwd_cpu(const at::Tensor& view_dirs, const at::Tensor& ray_origins, at::TensorList sky_w,
                              at::TensorList sky_b, int64_t sky_freqs, const at::Tensor& texels,
                              const at::Tensor& centre, const at::Tensor& radii, bool bf16_matmul);

}  // namespace dnmp
