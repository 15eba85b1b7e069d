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
// Each block is independent, so the output does not depend on the thread count.
//
// background_fwd: what a ray sees through all its layers, for rendering (forward only):
// the sky MLP (positional encoding of the direction, GEMMs over blocks of kBlock rays,
// sigmoid) and the far field's shells composited over it per ray (common/shade_math.h,
// far_field_over). The torch twin is DNMPRenderer.background_colour; in torch these are
// ~20 small ops over N x S x 4 temporaries, about a third of a render.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "common/interp_math.h"
#include "common/shade_math.h"
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

// sin and cos of x * f_k, f_k = 2^k pi (rounded to x's dtype, as torch does): [m, D, L] each.
void sincos_block(const at::Tensor& x, const at::Tensor& freqs, at::Tensor& arg, at::Tensor& s, at::Tensor& c) {
  at::mul_out(arg, x.unsqueeze(-1), freqs);
  at::sin_out(s, arg);
  at::cos_out(c, arg);
}

// Frequencies 2^k pi, k < L, in the options' dtype, as field.positional_encoding builds them.
at::Tensor frequencies(int64_t L, const at::TensorOptions& opt) { return at::pow(2.0, at::arange(L, opt)) * M_PI; }

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

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> shade_fwd_cpu(
    const at::Tensor& features_, const at::Tensor& faces_, const at::Tensor& normals_, const at::Tensor& pix_to_face_,
    const at::Tensor& bary_, const at::Tensor& zbuf_, const at::Tensor& view_dirs_, at::TensorList trunk_w_,
    at::TensorList trunk_b_, const at::Tensor& opacity_w_, const at::Tensor& opacity_b_, at::TensorList color_w_,
    at::TensorList color_b_, int64_t feature_freqs, int64_t dir_freqs, double min_transmittance,
    double surface_opacity) {
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
  // the direction encoding (all but the final cosine term) is per ray, not per layer
  at::Tensor dir_enc = at::empty({N, d_dir - 1}, feats.options());
  if (N > 0) {
    auto freqs_d = frequencies(Ld, feats.options());
    auto arg = at::empty({N, 3, Ld}, feats.options()), sn = at::empty_like(arg), cs = at::empty_like(arg);
    sincos_block(dirs, freqs_d, arg, sn, cs);
    AT_DISPATCH_FLOATING_TYPES(dt, "shade_dir_encoding", [&] {
      encode_layout(dirs.data_ptr<scalar_t>(), sn.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(), N, 3, Ld,
                    dir_enc.data_ptr<scalar_t>(), d_dir - 1);
    });
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

    at::parallel_for(0, nblocks, 1, [&](int64_t blk0, int64_t blk1) {
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

      for (int64_t blk = blk0; blk < blk1; ++blk) {
        const int64_t r0 = blk * kBlock, n = std::min(kBlock, N - r0);
        for (int64_t i = 0; i < n; ++i) ray_init(st[i]);
        for (int64_t l = 0; l < K; ++l) {
          int64_t m = 0;
          for (int64_t i = 0; i < n; ++i)
            if (pf[(r0 + i) * K + l] >= 0 && st[i].trans > min_t) alive[m++] = i;
          if (m == 0) continue;  // not break: a coarse layer may follow an empty fine one
          T* fp = f_in.data_ptr<T>();
          for (int64_t j = 0; j < m; ++j) {
            const int64_t r = r0 + alive[j], f = pf[r * K + l];
            const int64_t v[3] = {fc[3 * f], fc[3 * f + 1], fc[3 * f + 2]};
            interp_fragment(fa, C, v, bc + 3 * (r * K + l), fp + j * C);
          }
          if (Lf > 0) {
            at::Tensor a = arg.narrow(0, 0, m), s = sn.narrow(0, 0, m), c = cs.narrow(0, 0, m);
            sincos_block(f_in.narrow(0, 0, m), freqs_f, a, s, c);
          }
          encode_layout(fp, sn.data_ptr<T>(), cs.data_ptr<T>(), m, C, Lf, x_in.data_ptr<T>(), d_feat);
          at::Tensor h = run_mlp(x_in, t_out, twt, tb, m);  // [m, H], no ReLU after the last
          const T* hp = h.data_ptr<T>();
          T* cp = c_in.data_ptr<T>();
          for (int64_t j = 0; j < m; ++j) {
            const int64_t r = r0 + alive[j], f = pf[r * K + l];
            const T* hj = hp + j * H;
            T s = T(0);
            for (int64_t c = 0; c < H; ++c) s += owp[c] * hj[c];
            alpha[j] = sigmoid(s + ob0);
            T* row = cp + j * (H + d_dir);
            for (int64_t c = 0; c < H; ++c) row[c] = hj[c] > T(0) ? hj[c] : T(0);
            for (int64_t c = 0; c < d_dir - 1; ++c) row[H + c] = de[r * (d_dir - 1) + c];
            const T cosv = dr[3 * r] * nm[3 * f] + dr[3 * r + 1] * nm[3 * f + 1] + dr[3 * r + 2] * nm[3 * f + 2];
            row[H + d_dir - 1] = cosv < T(0) ? -cosv : cosv;
          }
          at::Tensor c = run_mlp(c_in, c_out, cwt, cb, m);  // [m, 3] logits
          const T* cl = c.data_ptr<T>();
          for (int64_t j = 0; j < m; ++j) {
            const int64_t r = r0 + alive[j];
            const T col[3] = {sigmoid(cl[3 * j]), sigmoid(cl[3 * j + 1]), sigmoid(cl[3 * j + 2])};
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
    });
  });
  return {rgb, depth, mean_depth, trans};
}

at::Tensor background_fwd_cpu(const at::Tensor& view_dirs_, const at::Tensor& ray_origins_, at::TensorList sky_w_,
                              at::TensorList sky_b_, int64_t sky_freqs, const at::Tensor& texels_,
                              const at::Tensor& centre_, const at::Tensor& radii_) {
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

  AT_DISPATCH_FLOATING_TYPES(dt, "background_fwd_cpu", [&] {
    using T = scalar_t;
    const T* dr = dirs.data_ptr<T>();
    const T* og = orig.data_ptr<T>();
    const T* tx = tex.data_ptr<T>();
    const T* cp = cen.data_ptr<T>();
    const T* rp = rad.data_ptr<T>();
    const T centre[3] = {cp[0], cp[1], cp[2]};
    T* out = rgb.data_ptr<T>();
    at::parallel_for(0, nblocks, 1, [&](int64_t blk0, int64_t blk1) {
      auto opt = dirs.options();
      at::Tensor x_in = at::empty({kBlock, d_in}, opt);
      at::Tensor arg = at::empty({kBlock, 3, L}, opt), sn = at::empty_like(arg), cs = at::empty_like(arg);
      std::vector<at::Tensor> outs;
      for (auto& w : sw) outs.push_back(at::empty({kBlock, w.size(0)}, opt));
      for (int64_t blk = blk0; blk < blk1; ++blk) {
        const int64_t r0 = blk * kBlock, m = std::min(kBlock, N - r0);
        if (L > 0) {
          at::Tensor a = arg.narrow(0, 0, m), s = sn.narrow(0, 0, m), c = cs.narrow(0, 0, m);
          sincos_block(dirs.narrow(0, r0, m), freqs, a, s, c);
        }
        encode_layout(dr + 3 * r0, sn.data_ptr<T>(), cs.data_ptr<T>(), m, 3, L, x_in.data_ptr<T>(), d_in);
        const T* logit = run_mlp(x_in, outs, swt, sb, m).data_ptr<T>();
        for (int64_t j = 0; j < m; ++j) {
          const int64_t r = r0 + j;
          const T sky[3] = {sigmoid(logit[3 * j]), sigmoid(logit[3 * j + 1]), sigmoid(logit[3 * j + 2])};
          if (S == 0) {
            for (int c = 0; c < 3; ++c) out[3 * r + c] = sky[c];
          } else {
            far_field_over(tx, S, size, rp, centre, og + 3 * r, dr + 3 * r, sky, out + 3 * r);
          }
        }
      }
    });
  });
  return rgb;
}

}  // namespace dnmp
