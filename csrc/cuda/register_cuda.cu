// CUDA kernels of the torch.ops.dnmp.* custom ops (schemas in bindings.cpp).
#include <torch/library.h>

#include "cuda/ops_cuda.h"

TORCH_LIBRARY_IMPL(dnmp, CUDA, m) {
  m.impl("rasterize_fwd", &dnmp::rasterize_fwd_cuda);
  m.impl("rasterize_bwd", &dnmp::rasterize_bwd_cuda);
  m.impl("interpolate_fwd", &dnmp::interpolate_fwd_cuda);
  m.impl("interpolate_bwd", &dnmp::interpolate_bwd_cuda);
}
