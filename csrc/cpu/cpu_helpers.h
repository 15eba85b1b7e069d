// Helpers shared by the CPU kernels (csrc/cpu/*.cpp) that are not device-independent math
// (that lives in csrc/common): compiler attributes and ATen-side constants.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

// Element loops compiled also for AVX-512 and AVX2 (GCC/Clang pick the clone for the CPU at
// load time; the build targets x86-64-v2).
#if defined(__x86_64__) && defined(__GNUC__)
#define DNMP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DNMP_CLONES
#endif

namespace dnmp {

// The encoding frequencies 2^k pi, k < L, in the options' dtype, as
// dnmp.model.field._frequencies builds them (for float32: pi rounded, times 2^k, exact).
inline at::Tensor frequencies(int64_t L, const at::TensorOptions& opt) {
  return at::pow(2.0, at::arange(L, opt)) * M_PI;
}

}  // namespace dnmp
