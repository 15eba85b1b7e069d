// Device-independent math of the fused shading path (dnmp.model.renderer, inference):
// positional encoding, sigmoid, and front-to-back compositing of one layer into a ray's
// running state. The torch twin is DNMPRenderer.shade_rays_early_exit; the formulas
// follow dnmp/model/field.py and renderer.py term for term. No torch types here.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace dnmp {

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

}  // namespace dnmp
