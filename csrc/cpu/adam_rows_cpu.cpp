// Adam update of selected rows of a table, in place (the vertex features of the radiance
// stage: a batch touches ~10^5 of ~10^6 rows). The torch path (dnmp.train.row_adam._row_adam:
// index_select of both moments, seven elementwise passes over [U, C], two index_copy_ and an
// index_add_) reads and writes each touched row about a dozen times; here each row is read
// and written twice (moments, then parameters, around one ATen sqrt of the new second
// moments). Same float32 operations in the same order as torch.optim.SparseAdam (and
// _row_adam): scalars rounded to float as ATen rounds a Python scalar for a float tensor, no
// fused multiply-add (-ffp-contract=off), ATen's own sqrt: the same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "cpu/cpu_helpers.h"
#include "ops.h"

namespace dnmp {

namespace {

// Moments of rows [b, e) in place; root[u] receives the new second moment (its sqrt is
// taken by ATen between the two passes).
DNMP_CLONES void adam_moments(float* exp_avg, float* exp_avg_sq, const int64_t* rows, const float* grad,
                              int64_t C, int64_t b, int64_t e, float one_minus_beta1, float one_minus_beta2,
                              float* root) {
  for (int64_t u = b; u < e; ++u) {
    const float* g = grad + u * C;
    float* m = exp_avg + rows[u] * C;
    float* v = exp_avg_sq + rows[u] * C;
    float* q = root + u * C;
    for (int64_t c = 0; c < C; ++c) {
      m[c] = (g[c] - m[c]) * one_minus_beta1 + m[c];
      v[c] = (g[c] * g[c] - v[c]) * one_minus_beta2 + v[c];
      q[c] = v[c];
    }
  }
}

DNMP_CLONES void adam_params(float* param, const float* exp_avg, const int64_t* rows, const float* root,
                             int64_t C, int64_t b, int64_t e, float eps, float neg_step_size) {
  for (int64_t u = b; u < e; ++u) {
    float* p = param + rows[u] * C;
    const float* m = exp_avg + rows[u] * C;
    const float* q = root + u * C;
    for (int64_t c = 0; c < C; ++c) p[c] = p[c] + (m[c] / (q[c] + eps)) * neg_step_size;
  }
}

}  // namespace

void adam_rows_cpu(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                   const at::Tensor& rows, const at::Tensor& grad, double step_size, double beta1, double beta2,
                   double eps) {
  TORCH_CHECK_TYPE(param.scalar_type() == at::kFloat && exp_avg.scalar_type() == at::kFloat &&
                       exp_avg_sq.scalar_type() == at::kFloat && grad.scalar_type() == at::kFloat,
                   "adam_rows_: param, exp_avg, exp_avg_sq and grad must be float32");
  TORCH_CHECK_TYPE(rows.scalar_type() == at::kLong, "adam_rows_: rows must be int64, got ", rows.scalar_type());
  TORCH_CHECK_VALUE(param.dim() >= 1 && param.is_contiguous() && exp_avg.is_contiguous() &&
                        exp_avg_sq.is_contiguous(),
                    "adam_rows_: param, exp_avg and exp_avg_sq must be contiguous tensors of at least one dim");
  TORCH_CHECK_VALUE(exp_avg.sizes() == param.sizes() && exp_avg_sq.sizes() == param.sizes(),
                    "adam_rows_: exp_avg ", exp_avg.sizes(), " and exp_avg_sq ", exp_avg_sq.sizes(),
                    " must have param's shape ", param.sizes());
  TORCH_CHECK_VALUE(rows.dim() == 1, "adam_rows_: rows must be [U], got ", rows.sizes());
  const int64_t N = param.size(0), U = rows.size(0);
  const int64_t C = N > 0 ? param.numel() / N : 0;
  TORCH_CHECK_VALUE(grad.dim() == param.dim() && grad.size(0) == U && grad.sizes().slice(1) == param.sizes().slice(1),
                    "adam_rows_: grad must be [U, ...] with param's row shape, got ", grad.sizes(), " for rows [",
                    U, "] and param ", param.sizes());
  const auto r = rows.contiguous();
  const auto g = grad.contiguous();
  const int64_t* rp = r.data_ptr<int64_t>();
  // a row out of range would write outside the table; repeated rows would race
  int64_t bad = -1;
  for (int64_t u = 0; u < U; ++u) {
    if (rp[u] < 0 || rp[u] >= N || (u > 0 && rp[u] <= rp[u - 1])) {
      bad = u;
      break;
    }
  }
  TORCH_CHECK_INDEX(bad < 0, "adam_rows_: rows must be sorted, unique and in [0, ", N, "); row ", bad, " is ",
                    bad >= 0 ? rp[bad] : 0);
  // ATen rounds a Python scalar to the tensor's dtype (float) before an elementwise op
  const float b1 = float(1.0 - beta1), b2 = float(1.0 - beta2), ep = float(eps), ss = float(-step_size);
  float* pp = param.data_ptr<float>();
  float* mp = exp_avg.data_ptr<float>();
  float* vp = exp_avg_sq.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  auto root = at::empty({U, C}, param.options());
  float* qp = root.data_ptr<float>();
  at::parallel_for(0, U, 1024, [&](int64_t b, int64_t e) {
    adam_moments(mp, vp, rp, gp, C, b, e, b1, b2, qp);
  });
  // ATen's sqrt, not std::sqrt: torch's vectorised float32 sqrt kernel does not always give
  // the correctly rounded root (~18% of values one ulp off on an AMD EPYC), and the same bits
  // as the reference need the same function on the same [U, C] values
  root.sqrt_();
  at::parallel_for(0, U, 1024, [&](int64_t b, int64_t e) {
    adam_params(pp, mp, rp, qp, C, b, e, ep, ss);
  });
}

}  // namespace dnmp
