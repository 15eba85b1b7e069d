// CPU fused shading of rasterized fragments for rendering (forward only, no autograd):
// per ray, layer by layer near to far: interpolate the vertex features -> positional
// encoding -> trunk MLP -> opacity head -> colour head -> front-to-back compositing with
// early ray termination. The torch twin is DNMPRenderer.shade_rays_early_exit.
//
// Rays are processed in blocks of kBlock: the rays of a block still alive at a layer are
// gathered into one matrix so every MLP layer is one small GEMM (at::addmm_out, single
// threaded inside the parallel region), not a per-ray loop. The sines and cosines of the
// encodings are evaluated by ATen's vectorised sin/cos over the block (scalar libm calls
// cost more than the MLP); their layout, the heads of width 1 and the compositing are the
// shared math of common/shade_math.h.
// Each block is independent and the threads claim blocks one at a time (parallel_take:
// the sky's blocks cost less than the road's), so the output does not depend on the threads.
//
// bf16_matmul (float32 inputs only): the MLP layers take bfloat16 operands (inputs and
// weights rounded to nearest even) and accumulate in float32, through ATen's brgemm
// micro-kernel (oneDNN; AMX tiles on CPUs that have them, 5-7x the float32 GEMM rate on
// these blocks), or, on CPUs with AVX512-BF16 but no AMX, through gemm_dp (VDPBF16PS).
// Everything else (interpolation, encoding arguments, sines, heads of width 1,
// compositing) stays float32. Its torch twin rounds the same operands
// (tests/model/test_fused_shading.py).
//
// float32 inputs without bf16_matmul on a CPU with AVX2 and FMA: the same layout (planar
// encoding by encode_pi_row, weights packed once per call) with float32 operands through
// gemm_f32_avx2; elsewhere, and for float64, the MLPs run as ATen addmm per block.
//
// background_fwd: what a ray sees through all its layers, for rendering (forward only):
// the sky MLP (positional encoding of the direction, GEMMs over blocks of kBlock rays,
// sigmoid) and the far field's shells composited over it per ray (common/shade_math.h,
// far_field_over). The torch twin is DNMPRenderer.background_colour; in torch these are
// ~20 small ops over N x S x 4 temporaries, about a third of a render.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "common/interp_math.h"
#include "common/shade_math.h"
#include "cpu/cpu_helpers.h"
#include "ops.h"

namespace dnmp {

namespace {

constexpr int64_t kBlock = 256;

void check_mlp(const std::vector<at::Tensor>& w, const std::vector<at::Tensor>& b, int64_t d_in, const at::Tensor& ref,
               const char* name, const char* ref_name = "features") {
  TORCH_CHECK_VALUE(!w.empty() && w.size() == b.size(), name, ": need as many biases as weights (at least one), got ",
                    w.size(), " and ", b.size());
  int64_t d = d_in;
  for (size_t i = 0; i < w.size(); ++i) {
    TORCH_CHECK_TYPE(w[i].scalar_type() == ref.scalar_type() && b[i].scalar_type() == ref.scalar_type(), name,
                     ": weights must have the ", ref_name, "' dtype ", ref.scalar_type());
    TORCH_CHECK_VALUE(w[i].device() == ref.device() && b[i].device() == ref.device(), name,
                      ": weights must be on the ", ref_name, "' device");
    TORCH_CHECK_VALUE(w[i].dim() == 2 && w[i].size(1) == d, name, " layer ", i, ": weight must have shape [out, ", d,
                      "], got ", w[i].sizes());
    TORCH_CHECK_VALUE(b[i].dim() == 1 && b[i].size(0) == w[i].size(0), name, " layer ", i,
                      ": bias must have shape [", w[i].size(0), "], got ", b[i].sizes());
    d = w[i].size(0);
  }
}

// bf16 operands need float32 inputs and a CPU with bf16 brgemm kernels.
void check_bf16(bool bf16_matmul, const at::Tensor& ref, const char* name) {
  if (!bf16_matmul) return;
  TORCH_CHECK_TYPE(ref.scalar_type() == at::kFloat, "bf16_matmul needs float32 ", name, ", got ", ref.scalar_type());
  TORCH_CHECK_VALUE(bf16_matmul_available(),
                    "bf16_matmul: this CPU has no bf16 matrix kernels (AMX or AVX512-BF16); pass bf16_matmul=False");
}

// sin and cos of x * f_k, f_k = 2^k pi (rounded to x's dtype, as torch does): [m, D, L] each,
// x a contiguous [m, D]. The products in a plain loop (a broadcasting at::mul costs as much
// as the sines on these small blocks); sin and cos vectorised by ATen.
void sincos_block(const at::Tensor& x, const at::Tensor& freqs, at::Tensor& arg, at::Tensor& s, at::Tensor& c) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sincos_block", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* f = freqs.data_ptr<scalar_t>();
    scalar_t* a = arg.data_ptr<scalar_t>();
    const int64_t n = x.numel(), L = freqs.numel();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < L; ++k) a[i * L + k] = xp[i] * f[k];
  });
  at::sin_out(s, arg);
  at::cos_out(c, arg);
}

// Columns of the planar encoding [x (D) | sin f_0 x .. sin f_{L-1} x (D each) | cos f_0 x ..
// cos f_{L-1} x] in field.positional_encoding's layout (per d: L sines, then L cosines):
// planar column i is column cols[i] there (a PackedChain's first_cols).
std::vector<int64_t> planar_columns(int64_t D, int64_t L) {
  std::vector<int64_t> cols(D * (1 + 2 * L));
  for (int64_t d = 0; d < D; ++d) cols[d] = d;
  for (int64_t k = 0; k < L; ++k)
    for (int64_t d = 0; d < D; ++d) {
      cols[D + k * D + d] = D + d * 2 * L + k;
      cols[D + (L + k) * D + d] = D + d * 2 * L + L + k;
    }
  return cols;
}

// float32 -> bfloat16 bits, rounded to nearest even (as c10::BFloat16 and torch's
// .bfloat16()); NaN stays a (quiet) NaN.
inline uint16_t bf16_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t rne = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return uint16_t((u & 0x7FFFFFFFu) > 0x7F800000u ? (u >> 16) | 0x40u : rne);
}

DNMP_CLONES void to_bf16_generic(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits(src[i]);
}

// rows x n: out = bf16(relu(acc + b)) (a hidden layer, rounded for the next GEMM; NaN stays
// NaN, as torch's ReLU keeps it).
DNMP_CLONES void bias_relu_bf16_generic(const float* acc, const float* b, int64_t rows, int64_t n, uint16_t* out) {
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t c = 0; c < n; ++c) {
      const float v = acc[j * n + c] + b[c];
      out[j * n + c] = bf16_bits(v < 0.f ? 0.f : v);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same two with AVX512-BF16's conversion instruction (round to nearest even, NaN kept;
// it flushes denormals, below 1.2e-38, to zero), 16 values at a time.
#define DNMP_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
DNMP_AVX512BF16 void to_bf16_avx512(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  for (; i < n; ++i) dst[i] = bf16_bits(src[i]);
}

DNMP_AVX512BF16 void bias_relu_bf16_avx512(const float* acc, const float* b, int64_t rows, int64_t n, uint16_t* out) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t j = 0; j < rows; ++j) {
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) {
      // max(0, v) returns v where v is NaN (MAXPS returns its second operand then)
      const __m512 v = _mm512_max_ps(zero, _mm512_add_ps(_mm512_loadu_ps(acc + j * n + c), _mm512_loadu_ps(b + c)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j * n + c), (__m256i)_mm512_cvtneps_pbh(v));
    }
    for (; c < n; ++c) {
      const float v = acc[j * n + c] + b[c];
      out[j * n + c] = bf16_bits(v < 0.f ? 0.f : v);
    }
  }
}
bool has_avx512bf16() {
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
}

// C[M, NV * 16] (row stride ldc) = A[M, K] (bf16, row stride lda) x B, B packed in pairs of
// rows ([K / 2][NV * 16][2] bf16, gemm_dp_pack), by VDPBF16PS: each instruction adds the
// products of one pair of A's columns with 16 pairs of B into float32 accumulators (the
// products are exact in float32; the sum rounds per pair, where brgemm's order may differ).
// M a multiple of 4, K even, N a multiple of 16 up to 64 (PackedChain's kPad, kCols). For
// CPUs with AVX512-BF16 but no AMX (brgemm has no bf16 kernels there).
template <int NV>
DNMP_AVX512BF16 void gemm_dp_tile(int64_t M, int64_t K, const uint16_t* A, int64_t lda, const uint16_t* B, float* C,
                                  int64_t ldc) {
  constexpr int64_t N = NV * 16;
  for (int64_t r = 0; r < M; r += 4) {
    __m512 acc[4][NV];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
    const uint16_t* a = A + r * lda;
    for (int64_t k2 = 0; k2 < K / 2; ++k2) {
      __m512i b[NV];
      for (int j = 0; j < NV; ++j) b[j] = _mm512_loadu_si512(B + (k2 * N + j * 16) * 2);
      for (int i = 0; i < 4; ++i) {
        int32_t pair;
        std::memcpy(&pair, a + i * lda + 2 * k2, 4);
        const __m512i av = _mm512_set1_epi32(pair);
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)av, (__m512bh)b[j]);
      }
    }
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < NV; ++j) _mm512_storeu_ps(C + (r + i) * ldc + j * 16, acc[i][j]);
  }
}

void gemm_dp(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const uint16_t* B, float* C,
             int64_t ldc) {
  switch (N / 16) {
    case 1: gemm_dp_tile<1>(M, K, A, lda, B, C, ldc); break;
    case 2: gemm_dp_tile<2>(M, K, A, lda, B, C, ldc); break;
    case 3: gemm_dp_tile<3>(M, K, A, lda, B, C, ldc); break;
    default: gemm_dp_tile<4>(M, K, A, lda, B, C, ldc); break;
  }
}
// C[M, N] (row stride ldc) = A[M, K] (float32, row stride lda) x B ([K, N] float32,
// row-major), by AVX2 FMA: tiles of R = 4 rows x 16 columns in 8 accumulators (each column strip
// of B stays in L1 while the rows stream; 6 rows ran 1.7x slower on an AMD Zen 3 in a throwaway
// timing script, not a repository command: presumably out of registers). M a multiple of 4, N a
// multiple of 16 (PackedChain's kPad). Sums run over k in order, one rounding per FMA. The
// float32 path of the fused ops on CPUs without bf16 kernels: ATen's addmm per block of 256
// rays cost more in dispatch and packing than in products (README, issue 12's seventh round).
#define DNMP_AVX2FMA __attribute__((target("avx2,fma")))
template <int R>
DNMP_AVX2FMA inline void gemm_f32_tile(int64_t K, const float* a, int64_t lda, const float* b, int64_t N, float* c,
                                       int64_t ldc) {
  __m256 acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * N), b1 = _mm256_loadu_ps(b + k * N + 8);
    for (int i = 0; i < R; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i * lda + k);
      acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < R; ++i) {
    _mm256_storeu_ps(c + i * ldc, acc[i][0]);
    _mm256_storeu_ps(c + i * ldc + 8, acc[i][1]);
  }
}
DNMP_AVX2FMA void gemm_f32_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, float* C,
                                int64_t ldc) {
  for (int64_t c0 = 0; c0 < N; c0 += 16) {
    for (int64_t r = 0; r < M; r += 4) gemm_f32_tile<4>(K, A + r * lda, lda, B + c0, N, C + r * ldc + c0, ldc);
  }
}
bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#else
void gemm_f32_avx2(int64_t, int64_t, int64_t, const float*, int64_t, const float*, float*, int64_t) {}
bool has_avx2_fma() { return false; }
void to_bf16_avx512(const float*, uint16_t*, int64_t) {}
void bias_relu_bf16_avx512(const float*, const float*, int64_t, int64_t, uint16_t*) {}
bool has_avx512bf16() { return false; }
void gemm_dp(int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, float*, int64_t) {}
#endif

// Which bf16 GEMM the chains use: ATen's brgemm where oneDNN has bf16 kernels for it (AMX),
// else VDPBF16PS (gemm_dp) where the CPU has AVX512-BF16, else none (bf16_matmul refused).
bool use_brgemm() {
  static const bool yes = at::native::cpublas::could_pack(at::kBFloat16);
  return yes;
}
bool use_gemm_dp() { return !use_brgemm() && has_avx512bf16(); }

// [K, N] bf16 (row-major) -> [K / 2][N][2], the pairs of rows gemm_dp reads. K even.
void gemm_dp_pack(const uint16_t* src, int64_t K, int64_t N, uint16_t* dst) {
  for (int64_t k2 = 0; k2 < K / 2; ++k2)
    for (int64_t c = 0; c < N; ++c) {
      dst[(k2 * N + c) * 2] = src[2 * k2 * N + c];
      dst[(k2 * N + c) * 2 + 1] = src[(2 * k2 + 1) * N + c];
    }
}

void to_bf16(const float* src, uint16_t* dst, int64_t n) {
  if (has_avx512bf16()) to_bf16_avx512(src, dst, n);
  else to_bf16_generic(src, dst, n);
}

void bias_relu_bf16(const float* acc, const float* b, int64_t rows, int64_t n, uint16_t* out) {
  if (has_avx512bf16()) bias_relu_bf16_avx512(acc, b, rows, n, out);
  else bias_relu_bf16_generic(acc, b, rows, n, out);
}

// sincospi: common/shade_math.h.

// The planar encoding [x (D) | sin f_0 x .. sin f_{L-1} x (D each) | cos f_0 x .. cos f_{L-1} x]
// of one row of D values x (float32), f_k = 2^k pi, into `row` (D (1 + 2 L) floats): sincospi
// for k = 0, double angles (sin 2t = 2 sin t cos t, cos 2t = (cos t - sin t)(cos t + sin t))
// for the others: ~2^k float32 ulps, far below bf16's 2^-8 for the few frequencies of the
// radiance field (2) and view directions (4). Values with |x| >= 2^21 or not finite take
// std::sin / std::cos of the float32 products x * f_k, as torch computes them.
DNMP_CLONES void encode_pi_row(const float* x, int64_t D, int64_t L, const float* freqs, float* row) {
  float* sn = row + D;
  float* cs = sn + L * D;
  bool odd = false;
  for (int64_t d = 0; d < D; ++d) {
    row[d] = x[d];
    odd |= !(std::fabs(x[d]) < 2097152.f);  // also NaN
  }
  if (L == 0) return;
  for (int64_t d = 0; d < D; ++d) sincospi(x[d], sn[d], cs[d]);
  for (int64_t k = 1; k < L; ++k)
    for (int64_t d = 0; d < D; ++d) {
      const float s1 = sn[(k - 1) * D + d], c1 = cs[(k - 1) * D + d];
      sn[k * D + d] = 2.f * s1 * c1;
      cs[k * D + d] = (c1 - s1) * (c1 + s1);
    }
  if (odd)
    for (int64_t d = 0; d < D; ++d)
      if (!(std::fabs(x[d]) < 2097152.f))
        for (int64_t k = 0; k < L; ++k) {
          const float a = x[d] * freqs[k];
          sn[k * D + d] = std::sin(a);
          cs[k * D + d] = std::cos(a);
        }
}

// encode_pi_row of m rows of x (row stride ldx), rounded to bf16 bits into `out` (row
// stride ldo); scratch: D (1 + 2 L) floats.
void encode_pi_bf16(const float* x, int64_t m, int64_t ldx, int64_t D, int64_t L, const float* freqs,
                    float* scratch, uint16_t* out, int64_t ldo) {
  const int64_t w = D * (1 + 2 * L);
  for (int64_t j = 0; j < m; ++j) {
    encode_pi_row(x + j * ldx, D, L, freqs, scratch);
    to_bf16(scratch, out + j * ldo, w);
  }
}

// encode_pi_row's layout for the first m rows of e (float32, row stride ld) in place, with
// torch's sines of the rounded products (the sky's 10 frequencies, where the products' rounding
// matters at bf16 resolution): x is in columns [0, D); writes the arguments x * f_k to both halves, then one vectorised sin and
// one cos over each half (as strided [m, L D] views).
void encode_planar(at::Tensor& e, int64_t m, int64_t D, const at::Tensor& freqs) {
  const int64_t L = freqs.numel();
  if (L == 0 || m == 0) return;
  float* p = e.data_ptr<float>();
  const float* f = freqs.data_ptr<float>();
  const int64_t ld = e.size(1);
  for (int64_t j = 0; j < m; ++j) {
    float* row = p + j * ld;
    for (int64_t k = 0; k < L; ++k)
      for (int64_t d = 0; d < D; ++d) row[D + k * D + d] = row[D + (L + k) * D + d] = row[d] * f[k];
  }
  auto rows = e.narrow(0, 0, m);
  rows.narrow(1, D, L * D).sin_();
  rows.narrow(1, D + L * D, L * D).cos_();
}

// Weights of a Linear chain as addmm's right operands ([in, out] views: addmm(bias, x, w^T)
// is nn.Linear); makes the biases contiguous in place.
std::vector<at::Tensor> transposed(const std::vector<at::Tensor>& w, std::vector<at::Tensor>& b) {
  std::vector<at::Tensor> wt;
  for (const auto& x : w) wt.push_back(x.t());
  for (auto& x : b) x = x.contiguous();
  return wt;
}

// The first m rows of `in` through a Linear/ReLU chain (weights transposed: wt[i] is
// [in, out]; no ReLU after the last layer), into the preallocated rows of `outs`.
at::Tensor run_mlp(const at::Tensor& in, std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& wt,
                   const std::vector<at::Tensor>& b, int64_t m) {
  at::Tensor cur = in.narrow(0, 0, m);
  for (size_t i = 0; i < wt.size(); ++i) {
    at::Tensor o = outs[i].narrow(0, 0, m);
    at::addmm_out(o, b[i], cur, wt[i]);
    if (i + 1 < wt.size()) o.clamp_min_(0);  // ReLU between layers
    cur = o;
  }
  return cur;
}

constexpr int64_t kPad = 16;   // widths of the bf16 matrices, padded with zero weights
constexpr int64_t kRows = 32;  // brgemm row counts are rounded up to this (few kernel shapes)
constexpr int64_t kCols = 64;  // brgemm packs B in column blocks of at most this width
int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Whether the fused ops' float32 MLPs run as a PackedChain (gemm_f32_avx2) instead of
// ATen's addmm per block: float32 inputs on a CPU with AVX2 and FMA.
bool use_f32_chain(const at::Tensor& ref) { return ref.scalar_type() == at::kFloat && has_avx2_fma(); }

// A Linear/ReLU chain (no ReLU after the last layer) with its weights packed once per op call
// and float32 accumulation, in one of two kinds: bf16 operands (inputs, hidden activations and
// weights rounded to bfloat16; ATen's brgemm micro-kernel, or gemm_dp) or float32 operands
// (gemm_f32_avx2). Widths are padded to kPad with zero weights and biases, so padded columns
// stay 0 through every ReLU. Read-only once built: shared by the threads; each thread brings
// its own Work.
struct PackedChain {
  bool bf16;                                    // the operands' kind
  std::vector<std::vector<at::Tensor>> packed;  // per layer, per column block: [kp_i, <= kCols], packed
  std::vector<at::Tensor> bias;                 // float32 [np_i]
  std::vector<int64_t> kp, np;

  struct Work {
    at::Tensor in, acc, act;  // bf16 [kBlock, kp_0] (bf16 only); float32 [kBlock, max np]; activations
  };

  // w, b: the chain's float32 weights [out, in] and biases. first_cols: where the first
  // layer's input columns come from (input column i of this chain is column first_cols[i]
  // of w[0]); empty: the same order.
  PackedChain(const std::vector<at::Tensor>& w, const std::vector<at::Tensor>& b, bool bf16_operands,
              const std::vector<int64_t>& first_cols = {})
      : bf16(bf16_operands) {
    int64_t k_in = round_up(std::max<int64_t>(w[0].size(1), 1), kPad);  // >= kPad: brgemm packs no empty B
    for (size_t i = 0; i < w.size(); ++i) {
      const int64_t K = w[i].size(1), N = w[i].size(0), n_p = round_up(N, kPad);
      auto wi = w[i];
      if (i == 0 && !first_cols.empty())
        wi = wi.index_select(1, at::tensor(first_cols, wi.options().dtype(at::kLong)));
      auto wt = at::zeros({k_in, n_p}, w[i].options());
      wt.narrow(0, 0, K).narrow(1, 0, N).copy_(wi.t());
      std::vector<at::Tensor> blocks;
      for (int64_t c0 = 0; c0 < n_p; c0 += kCols) {
        const int64_t nb = std::min(kCols, n_p - c0);
        if (!bf16) {  // gemm_f32_avx2 reads the block row-major as it is
          blocks.push_back(wt.narrow(1, c0, nb).contiguous());
          continue;
        }
        auto wb = wt.narrow(1, c0, nb).to(at::kBFloat16).contiguous();
        auto pk = at::empty_like(wb);
        if (use_brgemm())
          at::native::cpublas::pack(k_in, nb, nb, nb, at::kBFloat16, at::kBFloat16, wb.data_ptr(), pk.data_ptr());
        else
          gemm_dp_pack(reinterpret_cast<const uint16_t*>(wb.data_ptr<at::BFloat16>()), k_in, nb,
                       reinterpret_cast<uint16_t*>(pk.data_ptr<at::BFloat16>()));
        blocks.push_back(pk);
      }
      auto bi = at::zeros({n_p}, b[i].options());
      bi.narrow(0, 0, N).copy_(b[i]);
      packed.push_back(blocks);
      bias.push_back(bi.contiguous());
      kp.push_back(k_in);
      np.push_back(n_p);
      k_in = n_p;
    }
  }
  int64_t in_width() const { return kp.front(); }
  int64_t out_width() const { return np.back(); }
  Work work() const {
    const int64_t w = *std::max_element(np.begin(), np.end());
    const auto f = bias[0].options().dtype(at::kFloat), h = f.dtype(at::kBFloat16);
    if (!bf16) return {at::Tensor(), at::zeros({kBlock, w}, f), at::zeros({kBlock, w}, f)};
    return {at::zeros({kBlock, kp.front()}, h), at::zeros({kBlock, w}, f), at::zeros({kBlock, w}, h)};
  }
  // A float32 [kBlock, in_width()] input buffer (zeros: padded columns must stay 0).
  at::Tensor input_buffer() const { return at::zeros({kBlock, kp.front()}, bias[0].options()); }
  // Rows run through the products: m rounded up to kRows (whole brgemm shapes; for
  // gemm_f32_avx2 and gemm_dp a multiple of 4).
  static int64_t rows(int64_t m) { return std::min(round_up(m, kRows), kBlock); }
  // The first m (<= kBlock) rows of `in` (an input_buffer; rows up to rows(m) finite) through
  // the chain: float32 [m, out_width()] in ws.acc, biases added, no ReLU after the last layer.
  // With bf16 operands the input is rounded to bf16 (to_bf16) into ws.in first.
  const float* run(const at::Tensor& in, int64_t m, Work& ws) const {
    if (!bf16) return run_f32(in.data_ptr<float>(), m, ws);
    to_bf16(in.data_ptr<float>(), reinterpret_cast<uint16_t*>(ws.in.data_ptr<at::BFloat16>()), rows(m) * kp.front());
    return run(ws.in.data_ptr<at::BFloat16>(), m, ws);
  }
  // The same from bf16 rows (bf16 operands only; row stride in_width(), rows up to rows(m) finite).
  const float* run(const at::BFloat16* in, int64_t m, Work& ws) const {
    const int64_t mr = rows(m);
    const at::BFloat16* cur = in;
    float* acc = ws.acc.data_ptr<float>();
    at::BFloat16* act = ws.act.data_ptr<at::BFloat16>();
    for (size_t i = 0; i < packed.size(); ++i) {
      const int64_t n = np[i];
      for (size_t blk = 0; blk < packed[i].size(); ++blk) {
        const int64_t c0 = int64_t(blk) * kCols, nb = packed[i][blk].size(1);
        if (use_brgemm())
          at::native::cpublas::brgemm(mr, nb, kp[i], kp[i], nb, n, false, cur,
                                      packed[i][blk].data_ptr<at::BFloat16>(), acc + c0, true);
        else
          gemm_dp(mr, nb, kp[i], reinterpret_cast<const uint16_t*>(cur), kp[i],
                  reinterpret_cast<const uint16_t*>(packed[i][blk].data_ptr<at::BFloat16>()), acc + c0, n);
      }
      if (i + 1 == packed.size()) {
        add_bias(acc, i, m);
      } else {  // ReLU between layers
        bias_relu_bf16(acc, bias[i].data_ptr<float>(), mr, n, reinterpret_cast<uint16_t*>(act));
      }
      cur = act;
    }
    return acc;
  }

 private:
  void add_bias(float* acc, size_t i, int64_t m) const {
    const float* bi = bias[i].data_ptr<float>();
    const int64_t n = np[i];
    for (int64_t j = 0; j < m; ++j)
      for (int64_t c = 0; c < n; ++c) acc[j * n + c] += bi[c];
  }
  // float32 operands: the products by gemm_f32_avx2, bias and ReLU in float32.
  const float* run_f32(const float* in, int64_t m, Work& ws) const {
    const int64_t mr = rows(m);
    const float* cur = in;
    float* acc = ws.acc.data_ptr<float>();
    float* act = ws.act.data_ptr<float>();
    for (size_t i = 0; i < packed.size(); ++i) {
      const int64_t n = np[i];
      for (size_t blk = 0; blk < packed[i].size(); ++blk) {
        const int64_t c0 = int64_t(blk) * kCols, nb = packed[i][blk].size(1);
        gemm_f32_avx2(mr, nb, kp[i], cur, kp[i], packed[i][blk].data_ptr<float>(), acc + c0, n);
      }
      if (i + 1 == packed.size()) {
        add_bias(acc, i, m);
      } else {  // ReLU between layers; NaN stays NaN, as torch's ReLU keeps it
        const float* bi = bias[i].data_ptr<float>();
        for (int64_t j = 0; j < mr; ++j)
          for (int64_t c = 0; c < n; ++c) {
            const float v = acc[j * n + c] + bi[c];
            act[j * n + c] = v < 0.f ? 0.f : v;
          }
      }
      cur = act;
    }
    return acc;
  }
};

}  // namespace

bool bf16_matmul_available() { return use_brgemm() || use_gemm_dp(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shade_fwd_cpu(
    const at::Tensor& features_, const at::Tensor& faces_, const at::Tensor& normals_, const at::Tensor& pix_to_face_,
    const at::Tensor& bary_, const at::Tensor& zbuf_, const at::Tensor& view_dirs_, at::TensorList trunk_w_,
    at::TensorList trunk_b_, const at::Tensor& opacity_w_, const at::Tensor& opacity_b_, at::TensorList color_w_,
    at::TensorList color_b_, int64_t feature_freqs, int64_t dir_freqs, double min_transmittance,
    double surface_opacity, bool bf16_matmul) {
  // argument checks (shapes, dtypes, index ranges): the op never reads out of bounds
  TORCH_CHECK_TYPE(features_.scalar_type() == at::kFloat || features_.scalar_type() == at::kDouble,
                   "features must be float32 or float64, got ", features_.scalar_type());
  TORCH_CHECK_VALUE(features_.dim() == 2, "features must have shape [V, C], got ", features_.sizes());
  TORCH_CHECK_VALUE(faces_.dim() == 2 && faces_.size(1) == 3, "faces must have shape [F, 3], got ", faces_.sizes());
  TORCH_CHECK_VALUE(normals_.sizes() == faces_.sizes(), "normals must have shape ", faces_.sizes(), ", got ",
                    normals_.sizes());
  TORCH_CHECK_VALUE(pix_to_face_.dim() == 2, "pix_to_face must have shape [N, K], got ", pix_to_face_.sizes());
  const int64_t N = pix_to_face_.size(0), K = pix_to_face_.size(1);
  TORCH_CHECK_VALUE(bary_.dim() == 3 && bary_.size(0) == N && bary_.size(1) == K && bary_.size(2) == 3,
                    "bary_coords must have shape [N, K, 3] = [", N, ", ", K, ", 3], got ", bary_.sizes());
  TORCH_CHECK_VALUE(zbuf_.sizes() == pix_to_face_.sizes(), "zbuf must have shape ", pix_to_face_.sizes(), ", got ",
                    zbuf_.sizes());
  TORCH_CHECK_VALUE(view_dirs_.dim() == 2 && view_dirs_.size(0) == N && view_dirs_.size(1) == 3,
                    "view_dirs must have shape [N, 3] = [", N, ", 3], got ", view_dirs_.sizes());
  TORCH_CHECK_VALUE(feature_freqs >= 0 && dir_freqs >= 0, "feature_freqs and dir_freqs must be >= 0");
  TORCH_CHECK_VALUE(surface_opacity >= 0.0 && surface_opacity <= 1.0, "surface_opacity must be in [0, 1]");
  TORCH_CHECK_VALUE(min_transmittance >= 0.0 && min_transmittance < 1.0, "min_transmittance must be in [0, 1), got ",
                    min_transmittance);
  const int64_t C = features_.size(1);
  const int64_t d_feat = C * (1 + 2 * feature_freqs), d_dir = 3 * (1 + 2 * dir_freqs) + 1;
  std::vector<at::Tensor> tw(trunk_w_.begin(), trunk_w_.end()), tb(trunk_b_.begin(), trunk_b_.end());
  std::vector<at::Tensor> cw(color_w_.begin(), color_w_.end()), cb(color_b_.begin(), color_b_.end());
  check_mlp(tw, tb, d_feat, features_, "trunk");
  const int64_t H = tw.back().size(0);
  check_mlp({opacity_w_}, {opacity_b_}, H, features_, "opacity head");
  TORCH_CHECK_VALUE(opacity_w_.size(0) == 1, "opacity head must have 1 output, got ", opacity_w_.size(0));
  check_mlp(cw, cb, H + d_dir, features_, "colour head");
  TORCH_CHECK_VALUE(cw.back().size(0) == 3, "colour head must have 3 outputs, got ", cw.back().size(0));
  check_bf16(bf16_matmul, features_, "features");
  // the MLPs as PackedChains (bf16 operands, or float32 ones by gemm_f32_avx2), else addmm per block
  const bool packed = bf16_matmul || use_f32_chain(features_);

  const auto dt = features_.scalar_type();
  const auto feats = features_.contiguous();
  const auto faces = faces_.to(at::kLong).contiguous();
  const auto normals = normals_.to(dt).contiguous();
  const auto p2f = pix_to_face_.to(at::kLong).contiguous();
  const auto bary = bary_.to(dt).contiguous();
  const auto zbuf = zbuf_.to(dt).contiguous();
  const auto dirs = view_dirs_.to(dt).contiguous();
  check_face_indices(faces, feats.size(0), "features");
  check_pix_to_face(p2f, faces.size(0));
  const std::vector<at::Tensor> twt = transposed(tw, tb), cwt = transposed(cw, cb);
  const auto ow = opacity_w_.contiguous();
  const auto ob = opacity_b_.contiguous();
  const int64_t Lf = feature_freqs, Ld = dir_freqs;
  // frequencies 2^k pi in the features' dtype, as field.positional_encoding builds them
  const auto freqs_f = frequencies(Lf, feats.options());
  // the direction encoding (all but the final cosine term) is per ray, not per layer; for
  // PackedChains planar (encode_pi_row, the colour head's columns permuted to match)
  at::Tensor dir_enc = at::empty({N, d_dir - 1}, feats.options());
  if (N > 0 && packed) {
    auto freqs_d = frequencies(Ld, feats.options());
    const float* dp = dirs.data_ptr<float>();
    float* ep = dir_enc.data_ptr<float>();
    at::parallel_for(0, N, 4096, [&](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) encode_pi_row(dp + 3 * r, 3, Ld, freqs_d.data_ptr<float>(), ep + r * (d_dir - 1));
    });
  } else if (N > 0) {
    auto freqs_d = frequencies(Ld, feats.options());
    auto arg = at::empty({N, 3, Ld}, feats.options()), sn = at::empty_like(arg), cs = at::empty_like(arg);
    sincos_block(dirs, freqs_d, arg, sn, cs);
    AT_DISPATCH_FLOATING_TYPES(dt, "shade_dir_encoding", [&] {
      encode_layout(dirs.data_ptr<scalar_t>(), sn.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(), N, 3, Ld,
                    dir_enc.data_ptr<scalar_t>(), d_dir - 1);
    });
  }

  std::unique_ptr<PackedChain> trunk_pc, color_pc;
  if (packed) {
    trunk_pc = std::make_unique<PackedChain>(tw, tb, bf16_matmul, planar_columns(C, Lf));
    std::vector<int64_t> cols(H + d_dir);  // [h | planar direction encoding | cos]
    const auto dir_cols = planar_columns(3, Ld);
    for (int64_t i = 0; i < H; ++i) cols[i] = i;
    for (size_t i = 0; i < dir_cols.size(); ++i) cols[H + i] = H + dir_cols[i];
    cols[H + d_dir - 1] = H + d_dir - 1;
    color_pc = std::make_unique<PackedChain>(cw, cb, bf16_matmul, cols);
  }

  auto rgb = at::empty({N, 3}, feats.options());
  auto depth = at::empty({N}, feats.options());
  auto mean_depth = at::empty({N}, feats.options());
  auto trans = at::empty({N}, feats.options());
  const int64_t nblocks = (N + kBlock - 1) / kBlock;

  AT_DISPATCH_FLOATING_TYPES(dt, "shade_fwd_cpu", [&] {
    using T = scalar_t;
    const T* fa = feats.data_ptr<T>();
    const int64_t* fc = faces.data_ptr<int64_t>();
    const T* nm = normals.data_ptr<T>();
    const int64_t* pf = p2f.data_ptr<int64_t>();
    const T* bc = bary.data_ptr<T>();
    const T* zb = zbuf.data_ptr<T>();
    const T* dr = dirs.data_ptr<T>();
    const T* owp = ow.data_ptr<T>();
    const T* de = dir_enc.data_ptr<T>();
    const T ob0 = ob.data_ptr<T>()[0];
    const T min_t = T(min_transmittance);
    const T surface_level = T(1.0 - surface_opacity);
    T* o_rgb = rgb.data_ptr<T>();
    T* o_depth = depth.data_ptr<T>();
    T* o_mean = mean_depth.data_ptr<T>();
    T* o_trans = trans.data_ptr<T>();

    // blocks claimed one at a time: an image's blocks of sky and of road differ in work
    parallel_take(nblocks, [&](const auto& take) {
      // per-thread work space, reused by every block of this thread
      auto opt = feats.options();
      at::Tensor x_in = at::empty({kBlock, d_feat}, opt);
      at::Tensor f_in = at::empty({kBlock, C}, opt);
      at::Tensor arg = at::empty({kBlock, C, Lf}, opt), sn = at::empty_like(arg), cs = at::empty_like(arg);
      at::Tensor c_in = at::empty({kBlock, H + d_dir}, opt);
      std::vector<at::Tensor> t_out, c_out;
      for (auto& w : tw) t_out.push_back(at::empty({kBlock, w.size(0)}, opt));
      for (auto& w : cw) c_out.push_back(at::empty({kBlock, w.size(0)}, opt));
      std::vector<int64_t> alive(kBlock);
      std::vector<T> alpha(kBlock);
      std::vector<RayState<T>> st(kBlock);
      // PackedChains: the trunk's input (bf16, or float32) and the colour head's float32 one
      // (zeros: padded columns stay 0)
      at::Tensor x16, x32, c32;
      std::vector<float> scratch(d_feat);
      PackedChain::Work tws, cws;
      if (packed) {
        if (bf16_matmul) x16 = at::zeros({kBlock, trunk_pc->in_width()}, opt.dtype(at::kBFloat16));
        else x32 = trunk_pc->input_buffer();
        c32 = color_pc->input_buffer();
        tws = trunk_pc->work();
        cws = color_pc->work();
      }

      for (int64_t blk = take(); blk >= 0; blk = take()) {
        const int64_t r0 = blk * kBlock, n = std::min(kBlock, N - r0);
        for (int64_t i = 0; i < n; ++i) ray_init(st[i]);
        for (int64_t l = 0; l < K; ++l) {
          int64_t m = 0;
          for (int64_t i = 0; i < n; ++i)
            if (pf[(r0 + i) * K + l] >= 0 && st[i].trans > min_t) alive[m++] = i;
          if (m == 0) continue;  // not break: a coarse layer may follow an empty fine one
          // interpolated features [m, C]
          T* fp = f_in.data_ptr<T>();
          for (int64_t j = 0; j < m; ++j) {
            const int64_t r = r0 + alive[j], f = pf[r * K + l];
            const int64_t v[3] = {fc[3 * f], fc[3 * f + 1], fc[3 * f + 2]};
            interp_fragment(fa, C, v, bc + 3 * (r * K + l), fp + j * C);
          }
          // trunk: h [m, H] (row stride ldh), no ReLU after its last layer
          const T* hp;
          int64_t ldh = H;
          if (bf16_matmul) {  // T is float here (check_bf16)
            const int64_t lx = trunk_pc->in_width();
            encode_pi_bf16(reinterpret_cast<const float*>(fp), m, C, C, Lf, freqs_f.data_ptr<float>(), scratch.data(),
                           reinterpret_cast<uint16_t*>(x16.data_ptr<at::BFloat16>()), lx);
            hp = reinterpret_cast<const T*>(trunk_pc->run(x16.data_ptr<at::BFloat16>(), m, tws));
            ldh = trunk_pc->out_width();
          } else if (packed) {  // float32 operands; T is float here (use_f32_chain)
            const int64_t lx = trunk_pc->in_width();
            float* xp = x32.data_ptr<float>();
            for (int64_t j = 0; j < m; ++j)
              encode_pi_row(reinterpret_cast<const float*>(fp) + j * C, C, Lf, freqs_f.data_ptr<float>(), xp + j * lx);
            hp = reinterpret_cast<const T*>(trunk_pc->run(x32, m, tws));
            ldh = trunk_pc->out_width();
          } else {
            if (Lf > 0) {
              at::Tensor a = arg.narrow(0, 0, m), s = sn.narrow(0, 0, m), c = cs.narrow(0, 0, m);
              sincos_block(f_in.narrow(0, 0, m), freqs_f, a, s, c);
            }
            encode_layout(fp, sn.data_ptr<T>(), cs.data_ptr<T>(), m, C, Lf, x_in.data_ptr<T>(), d_feat);
            hp = run_mlp(x_in, t_out, twt, tb, m).data_ptr<T>();
          }
          // opacity head, and the colour head's input [relu(h), direction encoding, |cos|]
          at::Tensor& cin = packed ? c32 : c_in;
          const int64_t ldc = cin.size(1);
          T* cp = reinterpret_cast<T*>(cin.data_ptr());
          for (int64_t j = 0; j < m; ++j) {
            const int64_t r = r0 + alive[j], f = pf[r * K + l];
            const T* hj = hp + j * ldh;
            // four partial sums: a single one is a chain of H dependent additions
            T s4[4] = {T(0), T(0), T(0), T(0)};
            int64_t c = 0;
            for (; c + 4 <= H; c += 4)
              for (int q = 0; q < 4; ++q) s4[q] += owp[c + q] * hj[c + q];
            for (; c < H; ++c) s4[0] += owp[c] * hj[c];
            alpha[j] = sigmoid(((s4[0] + s4[1]) + (s4[2] + s4[3])) + ob0);
            const T cosv = dr[3 * r] * nm[3 * f] + dr[3 * r + 1] * nm[3 * f + 1] + dr[3 * r + 2] * nm[3 * f + 2];
            const T* dej = de + r * (d_dir - 1);
            T* row = cp + j * ldc;
            for (int64_t c = 0; c < H; ++c) row[c] = hj[c] > T(0) ? hj[c] : T(0);
            for (int64_t c = 0; c < d_dir - 1; ++c) row[H + c] = dej[c];
            row[H + d_dir - 1] = cosv < T(0) ? -cosv : cosv;
          }
          const T* cl;  // [m, 3] colour logits, row stride ldl
          int64_t ldl = 3;
          if (packed) {
            cl = reinterpret_cast<const T*>(color_pc->run(c32, m, cws));
            ldl = color_pc->out_width();
          } else {
            cl = run_mlp(c_in, c_out, cwt, cb, m).data_ptr<T>();
          }
          for (int64_t j = 0; j < m; ++j) {
            const int64_t r = r0 + alive[j];
            const T col[3] = {sigmoid(cl[ldl * j]), sigmoid(cl[ldl * j + 1]), sigmoid(cl[ldl * j + 2])};
            ray_composite(st[alive[j]], alpha[j], col, zb[r * K + l], surface_level);
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          const int64_t r = r0 + i;
          for (int c = 0; c < 3; ++c) o_rgb[3 * r + c] = st[i].rgb[c];
          ray_depths(st[i], o_depth + r, o_mean + r);
          o_trans[r] = st[i].trans;
        }
      }
      if (bf16_matmul && use_brgemm()) at::native::cpublas::brgemm_release(true);
    });
  });
  return {rgb, depth, mean_depth, trans};
}

at::Tensor background_fwd_cpu(const at::Tensor& view_dirs_, const at::Tensor& ray_origins_, at::TensorList sky_w_,
                              at::TensorList sky_b_, int64_t sky_freqs, const at::Tensor& texels_,
                              const at::Tensor& centre_, const at::Tensor& radii_, bool bf16_matmul) {
  TORCH_CHECK_TYPE(view_dirs_.scalar_type() == at::kFloat || view_dirs_.scalar_type() == at::kDouble,
                   "view_dirs must be float32 or float64, got ", view_dirs_.scalar_type());
  TORCH_CHECK_VALUE(view_dirs_.dim() == 2 && view_dirs_.size(1) == 3, "view_dirs must have shape [N, 3], got ",
                    view_dirs_.sizes());
  const int64_t N = view_dirs_.size(0);
  TORCH_CHECK_VALUE(sky_freqs >= 0, "sky_freqs must be >= 0");
  const auto dt = view_dirs_.scalar_type();
  std::vector<at::Tensor> sw(sky_w_.begin(), sky_w_.end()), sb(sky_b_.begin(), sky_b_.end());
  const int64_t d_in = 3 * (1 + 2 * sky_freqs);
  check_mlp(sw, sb, d_in, view_dirs_, "sky MLP", "view_dirs");
  TORCH_CHECK_VALUE(sw.back().size(0) == 3, "sky MLP must have 3 outputs, got ", sw.back().size(0));
  check_bf16(bf16_matmul, view_dirs_, "view_dirs");
  TORCH_CHECK_VALUE(radii_.dim() == 1, "radii must have shape [S], got ", radii_.sizes());
  const int64_t S = radii_.size(0);
  TORCH_CHECK_VALUE(texels_.dim() == 2 && texels_.size(1) == 4 && texels_.size(0) % (6 * std::max<int64_t>(S, 1)) == 0,
                    "texels must have shape [S * 6 * size * size, 4], got ", texels_.sizes());
  const int64_t per_face = S > 0 ? texels_.size(0) / (6 * S) : 0;
  const int64_t size = std::llround(std::sqrt(double(per_face)));
  TORCH_CHECK_VALUE(S == 0 || (size >= 1 && size * size == per_face), "texels must hold S * 6 square faces, got ",
                    texels_.size(0), " rows for ", S, " shells");
  TORCH_CHECK_VALUE(centre_.numel() == 3, "centre must have 3 values, got ", centre_.sizes());
  if (S > 0)
    TORCH_CHECK_VALUE(ray_origins_.sizes() == view_dirs_.sizes(), "ray_origins must have shape ", view_dirs_.sizes(),
                      ", got ", ray_origins_.sizes());
  for (const auto* t : {&ray_origins_, &texels_, &centre_, &radii_})
    TORCH_CHECK_VALUE(t->device() == view_dirs_.device(), "all inputs must be on the view_dirs' device");

  const auto dirs = view_dirs_.contiguous();
  const auto orig = S > 0 ? ray_origins_.to(dt).contiguous() : dirs;
  const auto tex = texels_.to(dt).contiguous();
  const auto cen = centre_.to(dt).contiguous().view({3});
  const auto rad = radii_.to(dt).contiguous();
  const std::vector<at::Tensor> swt = transposed(sw, sb);
  const int64_t L = sky_freqs;
  const auto freqs = frequencies(L, dirs.options());
  auto rgb = at::empty({N, 3}, dirs.options());
  const int64_t nblocks = (N + kBlock - 1) / kBlock;
  const bool packed = bf16_matmul || use_f32_chain(view_dirs_);  // as in shade_fwd_cpu
  std::unique_ptr<PackedChain> sky_pc;
  if (packed) sky_pc = std::make_unique<PackedChain>(sw, sb, bf16_matmul, planar_columns(3, L));

  AT_DISPATCH_FLOATING_TYPES(dt, "background_fwd_cpu", [&] {
    using T = scalar_t;
    const T* dr = dirs.data_ptr<T>();
    const T* og = orig.data_ptr<T>();
    const T* tx = tex.data_ptr<T>();
    const T* cp = cen.data_ptr<T>();
    const T* rp = rad.data_ptr<T>();
    const T centre[3] = {cp[0], cp[1], cp[2]};
    T* out = rgb.data_ptr<T>();
    parallel_take(nblocks, [&](const auto& take) {
      auto opt = dirs.options();
      at::Tensor x_in = at::empty({kBlock, d_in}, opt);
      at::Tensor arg = at::empty({kBlock, 3, L}, opt), sn = at::empty_like(arg), cs = at::empty_like(arg);
      std::vector<at::Tensor> outs;
      for (auto& w : sw) outs.push_back(at::empty({kBlock, w.size(0)}, opt));
      at::Tensor e32;
      PackedChain::Work ws;
      if (packed) {
        e32 = sky_pc->input_buffer();
        ws = sky_pc->work();
      }
      for (int64_t blk = take(); blk >= 0; blk = take()) {
        const int64_t r0 = blk * kBlock, m = std::min(kBlock, N - r0);
        const T* logit;  // [m, 3], row stride ld
        int64_t ld = 3;
        if (packed) {  // T is float here (check_bf16, use_f32_chain)
          float* e = e32.data_ptr<float>();
          const int64_t le = e32.size(1);
          for (int64_t j = 0; j < m; ++j)
            for (int c = 0; c < 3; ++c) e[j * le + c] = float(dr[3 * (r0 + j) + c]);
          encode_planar(e32, m, 3, freqs);
          logit = reinterpret_cast<const T*>(sky_pc->run(e32, m, ws));
          ld = sky_pc->out_width();
        } else {
          if (L > 0) {
            at::Tensor a = arg.narrow(0, 0, m), s = sn.narrow(0, 0, m), c = cs.narrow(0, 0, m);
            sincos_block(dirs.narrow(0, r0, m), freqs, a, s, c);
          }
          encode_layout(dr + 3 * r0, sn.data_ptr<T>(), cs.data_ptr<T>(), m, 3, L, x_in.data_ptr<T>(), d_in);
          logit = run_mlp(x_in, outs, swt, sb, m).data_ptr<T>();
        }
        for (int64_t j = 0; j < m; ++j) {
          const int64_t r = r0 + j;
          const T sky[3] = {sigmoid(logit[ld * j]), sigmoid(logit[ld * j + 1]), sigmoid(logit[ld * j + 2])};
          if (S == 0) {
            for (int c = 0; c < 3; ++c) out[3 * r + c] = sky[c];
          } else {
            far_field_over(tx, S, size, rp, centre, og + 3 * r, dr + 3 * r, sky, out + 3 * r);
          }
        }
      }
      if (bf16_matmul && use_brgemm()) at::native::cpublas::brgemm_release(true);
    });
  });
  return rgb;
}

}  // namespace dnmp
