// Input validation for the torch.ops.dnmp.* ops, shared by all devices.
// Type problems raise TypeError, shape/value problems ValueError (via
// TORCH_CHECK_TYPE / TORCH_CHECK_VALUE), with messages naming the argument.
#include <c10/util/Exception.h>

#include <cmath>

#include "ops.h"

namespace dnmp {

namespace {
bool is_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}
bool is_index(const at::Tensor& t) { return t.scalar_type() == at::kInt || t.scalar_type() == at::kLong; }
void same_device(const char* name, const at::Tensor& t, const at::Tensor& ref, const char* refname) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", refname, " is on ",
                    ref.device(), "; all inputs must be on one device");
}
}  // namespace

void check_rasterize_args(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& intrinsics,
                          const at::Tensor& world_to_cam, int64_t height, int64_t width, int64_t faces_per_pixel,
                          double near, double far) {
  TORCH_CHECK_TYPE(is_float(verts), "verts must be float32 or float64, got ", verts.scalar_type());
  TORCH_CHECK_VALUE(verts.dim() == 2 && verts.size(1) == 3, "verts must have shape [V, 3], got ", verts.sizes());
  TORCH_CHECK_TYPE(is_index(faces), "faces must be int32 or int64, got ", faces.scalar_type());
  TORCH_CHECK_VALUE(faces.dim() == 2 && faces.size(1) == 3, "faces must have shape [F, 3], got ", faces.sizes());
  TORCH_CHECK_TYPE(is_float(intrinsics), "intrinsics must be float32 or float64, got ", intrinsics.scalar_type());
  TORCH_CHECK_TYPE(is_float(world_to_cam), "world_to_cam must be float32 or float64, got ",
                   world_to_cam.scalar_type());
  TORCH_CHECK_VALUE(intrinsics.dim() == 3 && intrinsics.size(1) == 3 && intrinsics.size(2) == 3,
                    "intrinsics must have shape [B, 3, 3], got ", intrinsics.sizes());
  TORCH_CHECK_VALUE(world_to_cam.dim() == 3 && world_to_cam.size(1) == 4 && world_to_cam.size(2) == 4,
                    "world_to_cam must have shape [B, 4, 4], got ", world_to_cam.sizes());
  TORCH_CHECK_VALUE(intrinsics.size(0) == world_to_cam.size(0) && intrinsics.size(0) >= 1,
                    "intrinsics and world_to_cam must have the same batch size >= 1, got ", intrinsics.size(0),
                    " and ", world_to_cam.size(0));
  same_device("faces", faces, verts, "verts");
  same_device("intrinsics", intrinsics, verts, "verts");
  same_device("world_to_cam", world_to_cam, verts, "verts");
  TORCH_CHECK_VALUE(height > 0 && width > 0, "image size must be positive, got (H, W) = (", height, ", ", width,
                    ")");
  TORCH_CHECK_VALUE(faces_per_pixel >= 1, "faces_per_pixel must be >= 1, got ", faces_per_pixel);
  TORCH_CHECK_VALUE(!std::isnan(near) && !std::isnan(far) && near >= 0.0 && near < far,
                    "need 0 <= near < far, got near=", near, ", far=", far);
}

void check_raster_grads(const at::Tensor& verts, const at::Tensor& intrinsics, const at::Tensor& pix_to_face,
                        const at::Tensor& grad_zbuf, const at::Tensor& grad_bary) {
  TORCH_CHECK_TYPE(pix_to_face.scalar_type() == at::kLong, "pix_to_face must be int64");
  TORCH_CHECK_VALUE(pix_to_face.dim() == 4 && pix_to_face.size(0) == intrinsics.size(0),
                    "pix_to_face must have shape [B, H, W, K] matching the cameras, got ", pix_to_face.sizes());
  TORCH_CHECK_VALUE(grad_zbuf.sizes() == pix_to_face.sizes(), "grad_zbuf must have shape ", pix_to_face.sizes(),
                    ", got ", grad_zbuf.sizes());
  TORCH_CHECK_VALUE(grad_bary.dim() == 5 && grad_bary.sizes().slice(0, 4) == pix_to_face.sizes() &&
                        grad_bary.size(4) == 3,
                    "grad_bary must have shape pix_to_face.shape + [3], got ", grad_bary.sizes());
  same_device("pix_to_face", pix_to_face, verts, "verts");
  same_device("grad_zbuf", grad_zbuf, verts, "verts");
  same_device("grad_bary", grad_bary, verts, "verts");
}

void check_interpolate_args(const at::Tensor& attributes, const at::Tensor& faces, const at::Tensor& pix_to_face,
                            const at::Tensor& bary) {
  TORCH_CHECK_TYPE(is_float(attributes), "attributes must be float32 or float64, got ", attributes.scalar_type());
  TORCH_CHECK_VALUE(attributes.dim() == 2, "attributes must have shape [V, C], got ", attributes.sizes());
  TORCH_CHECK_TYPE(is_index(faces), "faces must be int32 or int64, got ", faces.scalar_type());
  TORCH_CHECK_VALUE(faces.dim() == 2 && faces.size(1) == 3, "faces must have shape [F, 3], got ", faces.sizes());
  TORCH_CHECK_TYPE(is_index(pix_to_face), "pix_to_face must be int32 or int64, got ", pix_to_face.scalar_type());
  TORCH_CHECK_TYPE(is_float(bary), "bary_coords must be float32 or float64, got ", bary.scalar_type());
  TORCH_CHECK_VALUE(pix_to_face.dim() >= 1 && bary.dim() == pix_to_face.dim() + 1 &&
                        bary.sizes().slice(0, pix_to_face.dim()) == pix_to_face.sizes() &&
                        bary.size(-1) == 3,
                    "bary_coords must have shape pix_to_face.shape + [3]; got pix_to_face ", pix_to_face.sizes(),
                    " and bary_coords ", bary.sizes());
  same_device("faces", faces, attributes, "attributes");
  same_device("pix_to_face", pix_to_face, attributes, "attributes");
  same_device("bary_coords", bary, attributes, "attributes");
}

void check_interpolate_grad(const at::Tensor& attributes, const at::Tensor& pix_to_face, const at::Tensor& grad_out) {
  TORCH_CHECK_TYPE(is_float(grad_out), "grad_out must be float32 or float64, got ", grad_out.scalar_type());
  auto shape = pix_to_face.sizes().vec();
  shape.push_back(attributes.size(1));
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(shape), "grad_out must have shape ", shape, ", got ",
                    grad_out.sizes());
  same_device("grad_out", grad_out, attributes, "attributes");
}

void check_face_indices(const at::Tensor& faces, int64_t V, const char* what) {
  if (faces.numel() == 0) return;
  auto mm = at::aminmax(faces);
  const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < V, "faces index vertices in [", lo, ", ", hi, "] but ", what, " has only ", V,
                    " rows");
}

void check_pix_to_face(const at::Tensor& pix_to_face, int64_t F) {
  if (pix_to_face.numel() == 0) return;
  const int64_t hi = pix_to_face.max().item<int64_t>();
  TORCH_CHECK_VALUE(hi < F, "pix_to_face refers to face ", hi, " but faces has only ", F, " rows");
}

}  // namespace dnmp
