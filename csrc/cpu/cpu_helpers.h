// Helpers shared by the CPU kernels (csrc/cpu/*.cpp) that are not device-independent math
// (that lives in csrc/common): compiler attributes and ATen-side constants.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
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

// Items [0, n) taken one at a time from a shared counter by the threads, each running
// body(take) once: take() returns the next unclaimed item, or -1 when none is left. Work
// that differs between items (image rows of sky and of road) stays balanced, and a thread
// slowed by other load on its core does not hold the others back; body sets up its
// per-thread scratch before taking items. Results must not depend on which thread runs
// which item.
template <typename Body>
void parallel_take(int64_t n, const Body& body) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    body([&]() -> int64_t {
      const int64_t i = next.fetch_add(1);
      return i < n ? i : -1;
    });
  });
}

// fn(i) for every i in [0, n), items taken as in parallel_take.
template <typename Fn>
void dynamic_for(int64_t n, const Fn& fn) {
  parallel_take(n, [&](const auto& take) {
    for (int64_t i = take(); i >= 0; i = take()) fn(i);
  });
}

}  // namespace dnmp
