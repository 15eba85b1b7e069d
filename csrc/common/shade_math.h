// Device-independent math of the fused shading path (dnmp.model.renderer, inference):
// positional encoding, sigmoid, front-to-back compositing of one layer into a ray's
// running state, and the far field's shells over the sky. The torch twins are
// DNMPRenderer.shade_rays_early_exit and DNMPRenderer.background_colour; the formulas
// follow dnmp/model/field.py and renderer.py term for term. No torch types here.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace dnmp {

// On the host an unqualified exp / sqrt / floor / sin / cos of a float is the C library's
// double function (a conversion and a slower double evaluation); these make it T's overload.
#if !defined(__CUDA_ARCH__)
using std::cos;
using std::exp;
using std::floor;
using std::sin;
using std::sqrt;
#endif

// NeRF positional encoding of D values with L frequencies, in the layout of
// field.positional_encoding: out[0:D] = x, then for each d: sin(f_0 x_d) .. sin(f_{L-1} x_d),
// cos(f_0 x_d) .. cos(f_{L-1} x_d), with f_k = 2^k * pi rounded to T (as torch computes
// the frequency tensor in the input's dtype). Writes D * (1 + 2 L) values.
template <typename T>
DNMP_HD void positional_encode(const T* x, int64_t D, int64_t L, T* out) {
  for (int64_t d = 0; d < D; ++d) out[d] = x[d];
  T* e = out + D;
  for (int64_t d = 0; d < D; ++d) {
    T f = T(M_PI);  // 2^0 * pi
    for (int64_t k = 0; k < L; ++k) {
      const T a = x[d] * f;
      e[d * 2 * L + k] = sin(a);
      e[d * 2 * L + L + k] = cos(a);
      f = f * T(2);  // exact: doubling a float
    }
  }
}

// The same layout from precomputed sines and cosines (row-major [m, D, L] each) of m
// rows of D values: row j of `out` (row stride `ld`) = [x_j, per d: sin_j[d, :], cos_j[d, :]].
template <typename T>
DNMP_HD void encode_layout(const T* x, const T* sn, const T* cs, int64_t m, int64_t D, int64_t L, T* out,
                           int64_t ld) {
  for (int64_t j = 0; j < m; ++j) {
    T* o = out + j * ld;
    for (int64_t d = 0; d < D; ++d) o[d] = x[j * D + d];
    for (int64_t d = 0; d < D; ++d)
      for (int64_t k = 0; k < L; ++k) {
        o[D + d * 2 * L + k] = sn[(j * D + d) * L + k];
        o[D + d * 2 * L + L + k] = cs[(j * D + d) * L + k];
      }
  }
}

// sin(pi x) and cos(pi x) in float32 (within a few ulps) for finite |x| < 2^21: x = n / 2 + r
// exactly, |r| <= 1/4, Taylor polynomials in t = pi r (truncation < 3e-8), the quadrant from
// n mod 4. Branch-free, so a loop of it vectorises.
DNMP_HD void sincospi(float x, float& s, float& c) {
  const float magic = 12582912.f;           // 1.5 * 2^23: adding and subtracting rounds to an integer
  const float h = (2.f * x + magic) - magic;  // round(2 x)
  const float t = (x - 0.5f * h) * 3.14159265358979f, t2 = t * t;
  const int n = int(h);
  const float sp = t * (1.f + t2 * (-1.f / 6 + t2 * (1.f / 120 + t2 * (-1.f / 5040 + t2 * (1.f / 362880)))));
  const float cp = 1.f + t2 * (-0.5f + t2 * (1.f / 24 + t2 * (-1.f / 720 + t2 * (1.f / 40320))));
  const float ss = (n & 1) ? cp : sp, cc = (n & 1) ? sp : cp;
  s = (n & 2) ? -ss : ss;
  c = ((n + 1) & 2) ? -cc : cc;
}

template <typename T>
DNMP_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// Running front-to-back compositing state of one ray (renderer.shade_rays_early_exit):
// transmittance, accumulated colour, sum of w * z, sum of w, surface depth.
template <typename T>
struct RayState {
  T trans, rgb[3], wz, wsum, zsurf;
};

template <typename T>
DNMP_HD void ray_init(RayState<T>& s) {
  s.trans = T(1);
  s.rgb[0] = s.rgb[1] = s.rgb[2] = T(0);
  s.wz = s.wsum = s.zsurf = T(0);
}

// Composite one layer of opacity `a`, colour `c`, camera-space depth `z` behind the
// state. `surface_level` = 1 - SURFACE_OPACITY: the surface depth is z of the first
// layer after which the transmittance drops to it or below.
template <typename T>
DNMP_HD void ray_composite(RayState<T>& s, T a, const T c[3], T z, T surface_level) {
  const T w = s.trans * a;
  for (int i = 0; i < 3; ++i) s.rgb[i] += w * c[i];
  s.wz += w * z;
  s.wsum += w;
  const T t_after = s.trans * (T(1) - a);
  if (s.trans > surface_level && t_after <= surface_level) s.zsurf = z;
  s.trans = t_after;
}

// Surface depth (else the weighted mean) and the weighted mean depth; 0 where no layer.
template <typename T>
DNMP_HD void ray_depths(const RayState<T>& s, T* depth, T* mean_depth) {
  const T mean = s.wsum > T(0) ? s.wz / (s.wsum > T(1e-12) ? s.wsum : T(1e-12)) : T(0);
  *mean_depth = mean;
  *depth = s.zsurf > T(0) ? s.zsurf : mean;
}

// Index of the largest of three magnitudes, the first on ties (as torch.argmax).
template <typename T>
DNMP_HD int argmax3(const T a[3]) {
  int i = 0;
  if (a[1] > a[i]) i = 1;
  if (a[2] > a[i]) i = 2;
  return i;
}

// The far field (model.field.FarField.forward) of one ray, composited near to far over
// `sky` (renderer.composite): S shells of radii `radii` around `centre`, each an RGBA
// cube map of size x size texels per face, logits stored [S * 6 * size * size, 4]. A ray
// from `origin` (world, metres) along the unit `dir` meets shell s at its far root; the
// point's cube-map texel coordinates (field.cube_map_texel) are read bilinearly, clamped
// at face edges; a shell the ray starts outside of is transparent. Writes out[3].
template <typename T>
DNMP_HD void far_field_over(const T* texels, int64_t S, int64_t size, const T* radii, const T centre[3],
                            const T origin[3], const T dir[3], const T sky[3], T out[3]) {
  T o[3];
  for (int i = 0; i < 3; ++i) o[i] = origin[i] - centre[i];
  const T b = (o[0] * dir[0] + o[1] * dir[1]) + o[2] * dir[2];
  const T oo = (o[0] * o[0] + o[1] * o[1]) + o[2] * o[2];
  T trans = T(1), rgb[3] = {T(0), T(0), T(0)};
  for (int64_t s = 0; s < S; ++s) {
    const T c = oo - radii[s] * radii[s];
    if (!(c < T(0))) continue;  // outside this shell: opacity 0, nothing to add
    T disc = b * b - c;
    disc = disc > T(0) ? disc : T(0);
    const T t = -b + sqrt(disc);
    const T p[3] = {o[0] + t * dir[0], o[1] + t * dir[1], o[2] + t * dir[2]};
    const T a[3] = {p[0] < T(0) ? -p[0] : p[0], p[1] < T(0) ? -p[1] : p[1], p[2] < T(0) ? -p[2] : p[2]};
    const int axis = argmax3(a);
    const int u_ax = axis == 0 ? 1 : 0, v_ax = axis == 2 ? 1 : 2;  // the other two, increasing
    const T major = a[axis] > T(1e-12) ? a[axis] : T(1e-12);
    const int64_t face = 2 * axis + (p[axis] < T(0) ? 1 : 0);
    const T half = T(0.5) * T(size);
    const T x = (p[u_ax] / major + T(1)) * half - T(0.5);
    const T y = (p[v_ax] / major + T(1)) * half - T(0.5);
    const T x0f = floor(x), y0f = floor(y);
    const T fx = x - x0f, fy = y - y0f;
    const auto clampi = [size](int64_t i) { return i < 0 ? int64_t(0) : (i > size - 1 ? size - 1 : i); };
    const int64_t xi = int64_t(x0f), yi = int64_t(y0f);
    const int64_t x0 = clampi(xi), x1 = clampi(xi + 1), y0 = clampi(yi), y1 = clampi(yi + 1);
    const int64_t base = (s * 6 + face) * size * size;
    const int64_t idx[4] = {base + y0 * size + x0, base + y0 * size + x1, base + y1 * size + x0,
                            base + y1 * size + x1};
    const T w[4] = {(T(1) - fx) * (T(1) - fy), fx * (T(1) - fy), (T(1) - fx) * fy, fx * fy};
    T logit[4];
    for (int ch = 0; ch < 4; ++ch)
      logit[ch] = ((texels[4 * idx[0] + ch] * w[0] + texels[4 * idx[1] + ch] * w[1]) +
                   texels[4 * idx[2] + ch] * w[2]) + texels[4 * idx[3] + ch] * w[3];
    const T alpha = sigmoid(logit[3]);
    const T wgt = trans * alpha;
    for (int ch = 0; ch < 3; ++ch) rgb[ch] += wgt * sigmoid(logit[ch]);
    trans = trans * (T(1) - alpha);
  }
  for (int ch = 0; ch < 3; ++ch) out[ch] = rgb[ch] + trans * sky[ch];
}

}  // namespace dnmp
