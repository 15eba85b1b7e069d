// CPU positional encoding of training steps (float32): [x, per channel d: sin(2^k pi x_d) for
// k < L, then cos(2^k pi x_d)], the layout of dnmp.model.field.positional_encoding, and its
// backward. The torch path (field.positional_encoding's GEMM + sin, and
// positional_encoding_reference) takes ATen's sines of the float32 products x * 2^k pi, whose
// CPU kernels (MKL's) cost ~5 ns a value on an AMD Zen 3 (their generic path): a fifth of a
// training step there. Here each value is sincospi (common/shade_math.h: exact reduction,
// polynomials) of 2^k x (exact: a power of two), vectorised over the channels of a row, which
// is closer to the true sine than the rounded product's; values with |2^k x| >= 2^21 or not
// finite take std::sin / std::cos of the float32 product x * f_k, as torch does.
// The backward needs no transcendental: d sin(f x) / dx = f cos(f x), d cos(f x) / dx =
// -f sin(f x), both read from the encoding itself.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "common/shade_math.h"
#include "cpu/cpu_helpers.h"
#include "ops.h"

namespace dnmp {

namespace {

// One row: x [D] -> out [D (1 + 2 L)]; s, c: scratch of D floats each.
DNMP_CLONES void encode_row(const float* x, int64_t D, int64_t L, const float* freqs, float* s, float* c,
                                float* out) {
  for (int64_t d = 0; d < D; ++d) out[d] = x[d];
  const int64_t w = 2 * L;
  for (int64_t k = 0; k < L; ++k) {
    const float scale = float(int64_t(1) << k);
    for (int64_t d = 0; d < D; ++d) sincospi(x[d] * scale, s[d], c[d]);  // vectorised over d
    for (int64_t d = 0; d < D; ++d) {
      const float v = x[d] * scale;
      if (!(std::fabs(v) < 2097152.f)) {  // also NaN: torch's sines of the rounded product
        const float a = x[d] * freqs[k];
        s[d] = std::sin(a);
        c[d] = std::cos(a);
      }
      out[D + d * w + k] = s[d];
      out[D + d * w + L + k] = c[d];
    }
  }
}

// One row of the backward: dx[d] = g[d] + sum_k f_k (g_sin_k cos_k - g_cos_k sin_k).
DNMP_CLONES void encode_row_bwd(const float* g, const float* enc, int64_t D, int64_t L, const float* freqs,
                                    float* dx) {
  const int64_t w = 2 * L;
  for (int64_t d = 0; d < D; ++d) {
    const float* gs = g + D + d * w;
    const float* e = enc + D + d * w;
    float acc = g[d];
    for (int64_t k = 0; k < L; ++k) acc += freqs[k] * (gs[k] * e[L + k] - gs[L + k] * e[k]);
    dx[d] = acc;
  }
}

void check_encoding_x(const at::Tensor& x, int64_t L, const char* name) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, name, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2, name, ": x must have shape [N, D], got ", x.sizes());
  TORCH_CHECK_VALUE(L >= 0 && L <= 20, name, ": num_freqs must be in [0, 20], got ", L);
}

}  // namespace

at::Tensor encode_fwd_cpu(const at::Tensor& x_, int64_t num_freqs) {
  check_encoding_x(x_, num_freqs, "encode_fwd");
  const auto x = x_.contiguous();
  const int64_t N = x.size(0), D = x.size(1), L = num_freqs, W = D * (1 + 2 * L);
  auto out = at::empty({N, W}, x.options());
  if (N == 0 || W == 0) return out;
  const auto freqs_t = frequencies(L, x_.options());
  const float* freqs = freqs_t.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, 512, [&](int64_t a, int64_t b) {
    std::vector<float> s(D), c(D);
    for (int64_t r = a; r < b; ++r) encode_row(xp + r * D, D, L, freqs, s.data(), c.data(), op + r * W);
  });
  return out;
}

at::Tensor encode_bwd_cpu(const at::Tensor& grad_, const at::Tensor& encoded_, int64_t num_freqs) {
  check_encoding_x(encoded_, num_freqs, "encode_bwd");
  TORCH_CHECK_TYPE(grad_.scalar_type() == at::kFloat, "encode_bwd: grad must be float32, got ", grad_.scalar_type());
  TORCH_CHECK_VALUE(grad_.sizes() == encoded_.sizes(), "encode_bwd: grad must have the encoding's shape ",
                    encoded_.sizes(), ", got ", grad_.sizes());
  const int64_t L = num_freqs, N = encoded_.size(0), W = encoded_.size(1);
  TORCH_CHECK_VALUE(W % (1 + 2 * L) == 0, "encode_bwd: the encoding's width ", W, " is not a multiple of ",
                    1 + 2 * L);
  const int64_t D = W / (1 + 2 * L);
  const auto g = grad_.contiguous();
  const auto enc = encoded_.contiguous();
  auto dx = at::empty({N, D}, enc.options());
  if (N == 0 || D == 0) return dx;
  const auto freqs_t = frequencies(L, enc.options());
  const float* freqs = freqs_t.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const float* ep = enc.data_ptr<float>();
  float* dp = dx.data_ptr<float>();
  at::parallel_for(0, N, 1024, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) encode_row_bwd(gp + r * W, ep + r * W, D, L, freqs, dp + r * D);
  });
  return dx;
}

}  // namespace dnmp
