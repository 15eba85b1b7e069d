// Device-independent barycentric interpolation of per-vertex attributes.
#pragma once

#include <cstdint>

#include "macros.h"

namespace dnmp {

// out[c] = sum_i bary[i] * attr[v_i][c]  (one fragment, C channels)
template <typename T>
DNMP_HD void interp_fragment(const T* attr, int64_t C, const int64_t v[3], const T bary[3], T* out) {
  for (int64_t c = 0; c < C; ++c)
    out[c] = (bary[0] * attr[v[0] * C + c] + bary[1] * attr[v[1] * C + c]) + bary[2] * attr[v[2] * C + c];
}

// d loss / d bary[i] = sum_c g[c] * attr[v_i][c]
template <typename T>
DNMP_HD void interp_grad_bary(const T* attr, int64_t C, const int64_t v[3], const T* g, T* gbary) {
  for (int i = 0; i < 3; ++i) {
    T s = T(0);
    for (int64_t c = 0; c < C; ++c) s += g[c] * attr[v[i] * C + c];
    gbary[i] = s;
  }
}

// Forward of one fragment of face f (f < 0: empty fragment, zeros), faces of index type I.
template <typename T, typename I>
DNMP_HD void interp_fwd_one(const T* attr, int64_t C, const I* faces, int64_t f, const T bary[3], T* out) {
  if (f < 0) {
    for (int64_t c = 0; c < C; ++c) out[c] = T(0);
    return;
  }
  const int64_t v[3] = {int64_t(faces[3 * f]), int64_t(faces[3 * f + 1]), int64_t(faces[3 * f + 2])};
  interp_fragment(attr, C, v, bary, out);
}

// d loss / d bary of one fragment of face f (zeros when f < 0).
template <typename T, typename I>
DNMP_HD void interp_bwd_bary_one(const T* attr, int64_t C, const I* faces, int64_t f, const T* g, T* gbary) {
  if (f < 0) {
    gbary[0] = gbary[1] = gbary[2] = T(0);
    return;
  }
  const int64_t v[3] = {int64_t(faces[3 * f]), int64_t(faces[3 * f + 1]), int64_t(faces[3 * f + 2])};
  interp_grad_bary(attr, C, v, g, gbary);
}

}  // namespace dnmp
