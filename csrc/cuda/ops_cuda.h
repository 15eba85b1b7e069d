// Declarations of the CUDA kernels behind the torch.ops.dnmp.* ops.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace dnmp {

std::tuple<at::Tensor, at::Tensor, at::Tensor> rasterize_fwd_cuda(const at::Tensor& verts, const at::Tensor& faces,
                                                                  const at::Tensor& intrinsics,
                                                                  const at::Tensor& world_to_cam, int64_t height,
                                                                  int64_t width, int64_t faces_per_pixel,
                                                                  double near, double far);
at::Tensor rasterize_bwd_cuda(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& intrinsics,
                              const at::Tensor& world_to_cam, const at::Tensor& pix_to_face,
                              const at::Tensor& grad_zbuf, const at::Tensor& grad_bary);
at::Tensor interpolate_fwd_cuda(const at::Tensor& attributes, const at::Tensor& faces, const at::Tensor& pix_to_face,
                                const at::Tensor& bary);
std::tuple<at::Tensor, at::Tensor> interpolate_bwd_cuda(const at::Tensor& attributes, const at::Tensor& faces,
                                                        const at::Tensor& pix_to_face, const at::Tensor& bary,
                                                        const at::Tensor& grad_out, bool bary_grad);

}  // namespace dnmp
