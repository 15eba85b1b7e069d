// Registration of the dnmp custom ops (torch.ops.dnmp.*) and the Python module.
// Schemas are defined once here; each device registers its kernels with
// TORCH_LIBRARY_IMPL (CPU below, CUDA in cuda/*.cu when built with CUDA).
// Fake implementations and autograd are attached in dnmp/ops/_ops.py.
#include <torch/extension.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(dnmp, m) {
  m.def(
      "rasterize_fwd(Tensor verts, Tensor faces, Tensor intrinsics, Tensor world_to_cam, int height, int width, "
      "int faces_per_pixel, float near, float far) -> (Tensor, Tensor, Tensor)");
  m.def(
      "rasterize_bwd(Tensor verts, Tensor faces, Tensor intrinsics, Tensor world_to_cam, Tensor pix_to_face, "
      "Tensor grad_zbuf, Tensor grad_bary) -> Tensor");
  m.def("interpolate_fwd(Tensor attributes, Tensor faces, Tensor pix_to_face, Tensor bary) -> Tensor");
  m.def(
      "interpolate_bwd(Tensor attributes, Tensor faces, Tensor pix_to_face, Tensor bary, Tensor grad_out, "
      "bool bary_grad=True) -> (Tensor, Tensor)");
  m.def(
      "shade_fwd(Tensor features, Tensor faces, Tensor normals, Tensor pix_to_face, Tensor bary, Tensor zbuf, "
      "Tensor view_dirs, Tensor[] trunk_w, Tensor[] trunk_b, Tensor opacity_w, Tensor opacity_b, "
      "Tensor[] color_w, Tensor[] color_b, int feature_freqs, int dir_freqs, float min_transmittance, "
      "float surface_opacity, bool bf16_matmul=False) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "background_fwd(Tensor view_dirs, Tensor ray_origins, Tensor[] sky_w, Tensor[] sky_b, int sky_freqs, "
      "Tensor texels, Tensor centre, Tensor radii, bool bf16_matmul=False) -> Tensor");
  m.def("encode_fwd(Tensor x, int num_freqs) -> Tensor");
  m.def("encode_bwd(Tensor grad, Tensor encoded, int num_freqs) -> Tensor");
  m.def(
      "adam_rows_(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor rows, Tensor grad, "
      "float step_size, float beta1, float beta2, float eps) -> ()");
}

TORCH_LIBRARY_IMPL(dnmp, CPU, m) {
  m.impl("rasterize_fwd", &dnmp::rasterize_fwd_cpu);
  m.impl("rasterize_bwd", &dnmp::rasterize_bwd_cpu);
  m.impl("interpolate_fwd", &dnmp::interpolate_fwd_cpu);
  m.impl("interpolate_bwd", &dnmp::interpolate_bwd_cpu);
  m.impl("shade_fwd", &dnmp::shade_fwd_cpu);
  m.impl("background_fwd", &dnmp::background_fwd_cpu);
  m.impl("encode_fwd", &dnmp::encode_fwd_cpu);
  m.impl("encode_bwd", &dnmp::encode_bwd_cpu);
  m.impl("adam_rows_", &dnmp::adam_rows_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dnmp compiled kernels; the ops live in torch.ops.dnmp";
#ifdef DNMP_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("bf16_matmul_available", &dnmp::bf16_matmul_available,
        "True when this CPU has bf16 brgemm kernels (the shading ops' bf16_matmul)");
#ifdef DNMP_SOURCE_HASH
  // setup.py passes the sha256 of csrc/; the loader reads this stamp from the
  // binary (without loading it) to refuse a build older than its sources.
  static const char kStamp[] = "DNMP_SOURCE_HASH=" DNMP_SOURCE_HASH;
  m.attr("source_stamp") = kStamp;
#else
  m.attr("source_stamp") = pybind11::none();
#endif
}
