// Device-independent rasterization math (triangle setup, edge functions,
// perspective-correct barycentrics, K-nearest insertion, analytic backward).
//
// The forward arithmetic mirrors dnmp/ops/_reference.py operation by operation
// (same association order, same dtype, no fused multiply-add: build with
// -ffp-contract=off / --fmad=false) so that exact-tie coverage decisions agree
// with the reference bit for bit.
//
// Conventions (DESIGN.md): OpenCV pinhole, pixel (x, y) centre at image
// coordinates (x, y); camera point pc = R * X + t; u = fx * (xc / zc) + cx.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace dnmp {

// Camera parameters of one view, in the scalar type of the kernel.
template <typename T>
struct Camera {
  T r[3][4];  // rows of world_to_cam (rotation | translation)
  T fx, fy, cx, cy;
};

// Camera of one view from a row-major intrinsics matrix K [3, 3] and a row-major
// world_to_cam M [4, 4] (host or device memory, whichever side runs it).
template <typename T>
DNMP_HD Camera<T> camera_from_ptr(const T* K, const T* M) {
  Camera<T> cam;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) cam.r[r][c] = M[4 * r + c];
  cam.fx = K[0];
  cam.fy = K[4];
  cam.cx = K[2];
  cam.cy = K[5];
  return cam;
}

// The same camera in double (the backward works in double).
template <typename T>
DNMP_HD Camera<double> camera_to_double(const Camera<T>& c) {
  Camera<double> d;
  for (int r = 0; r < 3; ++r)
    for (int k = 0; k < 4; ++k) d.r[r][k] = double(c.r[r][k]);
  d.fx = double(c.fx);
  d.fy = double(c.fy);
  d.cx = double(c.cx);
  d.cy = double(c.cy);
  return d;
}

// A vertex after projection: image coords (u, v), camera depth z, usable flag.
template <typename T>
struct ProjVert {
  T u, v, z;
  bool ok;  // finite and z > near
};

template <typename T>
DNMP_HD T min3(T a, T b, T c) {
  T m = a < b ? a : b;
  return m < c ? m : c;
}

template <typename T>
DNMP_HD T max3(T a, T b, T c) {
  T m = a > b ? a : b;
  return m > c ? m : c;
}

template <typename T>
DNMP_HD bool is_finite(T x) {
  return x - x == T(0);  // false for NaN and +-Inf, works on host and device
}

template <typename T>
DNMP_HD ProjVert<T> project_vertex(const Camera<T>& cam, T X, T Y, T Z, T near) {
  ProjVert<T> p;
  T pc[3];
  for (int r = 0; r < 3; ++r) {
    T a = cam.r[r][0] * X;
    T b = cam.r[r][1] * Y;
    T c = cam.r[r][2] * Z;
    pc[r] = ((a + b) + c) + cam.r[r][3];
  }
  p.z = pc[2];
  T qx = pc[0] / pc[2];
  T qy = pc[1] / pc[2];
  p.u = cam.fx * qx + cam.cx;
  p.v = cam.fy * qy + cam.cy;
  p.ok = is_finite(pc[0]) && is_finite(pc[1]) && is_finite(pc[2]) && is_finite(p.u) && is_finite(p.v) &&
         pc[2] > near;
  return p;
}

// Everything needed to test pixel centres against one face.
// Edge i is the edge opposite vertex i, from vertex (i+1)%3 to (i+2)%3. Its
// endpoints are stored in canonical (lexicographic) order a, b, so that two
// faces sharing an edge evaluate the same expression; s[i] restores the
// orientation that makes the face interior positive.
template <typename T>
struct FaceSetup {
  T au[3], av[3], du[3], dv[3];  // canonical start point and (b - a)
  T s[3];                         // +-1
  bool tie_ok[3];                 // pixel exactly on edge i belongs to this face
  T z[3];                         // camera depth of the vertices
  T umin, umax, vmin, vmax;       // screen bounding box of the vertices
};

// Returns false when the face can never cover a pixel (culled by near plane,
// non-finite vertex, zero or non-finite screen area).
template <typename T>
DNMP_HD bool setup_face(const ProjVert<T>& p0, const ProjVert<T>& p1, const ProjVert<T>& p2, FaceSetup<T>& fs) {
  if (!(p0.ok && p1.ok && p2.ok)) return false;
  const ProjVert<T>* p[3] = {&p0, &p1, &p2};
  T area = (p1.u - p0.u) * (p2.v - p0.v) - (p1.v - p0.v) * (p2.u - p0.u);
  if (!(area != T(0)) || !is_finite(area)) return false;
  T fsign = area > T(0) ? T(1) : T(-1);
  for (int i = 0; i < 3; ++i) {
    const ProjVert<T>& j = *p[(i + 1) % 3];
    const ProjVert<T>& k = *p[(i + 2) % 3];
    bool j_first = (j.u < k.u) || (j.u == k.u && j.v <= k.v);
    const ProjVert<T>& a = j_first ? j : k;
    const ProjVert<T>& b = j_first ? k : j;
    fs.au[i] = a.u;
    fs.av[i] = a.v;
    fs.du[i] = b.u - a.u;
    fs.dv[i] = b.v - a.v;
    fs.s[i] = (j_first ? T(1) : T(-1)) * fsign;
    T odu = fs.s[i] * fs.du[i];
    T odv = fs.s[i] * fs.dv[i];
    fs.tie_ok[i] = (odv < T(0)) || (odv == T(0) && odu > T(0));
    fs.z[i] = p[i]->z;
  }
  fs.umin = min3(p0.u, p1.u, p2.u);
  fs.umax = max3(p0.u, p1.u, p2.u);
  fs.vmin = min3(p0.v, p1.v, p2.v);
  fs.vmax = max3(p0.v, p1.v, p2.v);
  return true;
}

// The part of setup_face needed for culling and binning: same validity test
// (same arithmetic), plus the screen bounding box and the nearest vertex depth.
template <typename T>
DNMP_HD bool cull_face(const ProjVert<T>& p0, const ProjVert<T>& p1, const ProjVert<T>& p2, T box[4], T& zmin) {
  if (!(p0.ok && p1.ok && p2.ok)) return false;
  T area = (p1.u - p0.u) * (p2.v - p0.v) - (p1.v - p0.v) * (p2.u - p0.u);
  if (!(area != T(0)) || !is_finite(area)) return false;
  box[0] = min3(p0.u, p1.u, p2.u);
  box[1] = max3(p0.u, p1.u, p2.u);
  box[2] = min3(p0.v, p1.v, p2.v);
  box[3] = max3(p0.v, p1.v, p2.v);
  zmin = min3(p0.z, p1.z, p2.z);
  return true;
}

// Pixel-centre range [x0, x1] x [y0, y1] inside an H x W image covered by the
// screen box [umin, umax] x [vmin, vmax]; false when empty. Pixel (x, y) has its
// centre at (x, y), so the range is ceil(min) .. floor(max), clipped.
template <typename T>
DNMP_HD bool pixel_box(T umin, T umax, T vmin, T vmax, int H, int W, int& x0, int& x1, int& y0, int& y1) {
  const double fx0 = ::ceil(double(umin)), fx1 = ::floor(double(umax));
  const double fy0 = ::ceil(double(vmin)), fy1 = ::floor(double(vmax));
  if (fx0 > W - 1 || fx1 < 0 || fy0 > H - 1 || fy1 < 0 || fx0 > fx1 || fy0 > fy1) return false;
  x0 = fx0 < 0 ? 0 : int(fx0);
  x1 = fx1 > W - 1 ? W - 1 : int(fx1);
  y0 = fy0 < 0 ? 0 : int(fy0);
  y1 = fy1 > H - 1 ? H - 1 : int(fy1);
  return true;
}

// Lower bound of any depth the face can produce: its nearest vertex depth shrunk
// by a relative margin far larger than the few-ulp rounding of the depth formula
// (a weighted harmonic mean of the vertex depths), so rejecting a pixel whose
// K-th depth is below it is exact.
template <typename T>
DNMP_HD T depth_lower_bound(T zmin) {
  return zmin * T(1 - 1e-5);
}

// Test the pixel centre (qx, qy). On coverage returns true with the depth z and
// the unnormalised perspective weights a[i] (bary[i] = a[i] / ssum); z > far
// is not covered.
// Sets `outside` when an edge test fails (the pixel centre is outside the face); false
// with `outside` unset means inside but rejected (degenerate weights, beyond far).
//
// Each edge test is monotone in qx along a row: fl(qx - au) is non-decreasing in qx,
// and multiplying by a constant, subtracting from a constant and the sign flip are
// monotone too (rounding to nearest is monotone; no FMA contraction). So the pixels of
// a row that pass all three tests form one run, as in exact arithmetic.
template <typename T>
DNMP_HD bool cover_pixel(const FaceSetup<T>& fs, T qx, T qy, T far, T& z, T a[3], T& ssum, bool& outside) {
  T e[3];
  outside = false;
  for (int i = 0; i < 3; ++i) {
    T lhs = fs.du[i] * (qy - fs.av[i]);
    T rhs = fs.dv[i] * (qx - fs.au[i]);
    e[i] = fs.s[i] * (lhs - rhs);
    if (!(e[i] > T(0) || (e[i] == T(0) && fs.tie_ok[i]))) {
      outside = true;
      return false;
    }
  }
  a[0] = e[0] / fs.z[0];
  a[1] = e[1] / fs.z[1];
  a[2] = e[2] / fs.z[2];
  ssum = (a[0] + a[1]) + a[2];
  T esum = (e[0] + e[1]) + e[2];
  if (!(esum > T(0))) return false;
  z = esum / ssum;
  return z <= far && is_finite(z);
}

template <typename T>
DNMP_HD void finish_bary(const T a[3], T ssum, T bary[3]) {
  bary[0] = a[0] / ssum;
  bary[1] = a[1] / ssum;
  bary[2] = a[2] / ssum;
}

// One entry of a pixel's K-nearest list.
template <typename T>
struct Frag {
  T z;
  int64_t face;
  T b[3];
};

// Strict order of fragments: nearer first, lower face index on equal depth.
template <typename T>
DNMP_HD bool frag_less(T z, int64_t face, const Frag<T>& o) {
  return z < o.z || (z == o.z && face < o.face);
}

// Insert (z, face) into a list sorted by frag_less, holding `count` of at most
// K entries. The order in which faces arrive does not matter.
template <typename T>
DNMP_HD void insert_k(Frag<T>* list, int& count, int K, T z, int64_t face, const T b[3]) {
  int pos = count;
  while (pos > 0 && frag_less(z, face, list[pos - 1])) --pos;
  if (pos >= K) return;
  int last = count < K ? count : K - 1;
  for (int i = last; i > pos; --i) list[i] = list[i - 1];
  list[pos].z = z;
  list[pos].face = face;
  list[pos].b[0] = b[0];
  list[pos].b[1] = b[1];
  list[pos].b[2] = b[2];
  if (count < K) ++count;
}

// Outcome of offering a face to one pixel's K-nearest list.
enum Offer : int {
  kOfferOutside = -1,        // the pixel centre is outside the face (an edge test failed)
  kOfferDepthRejected = 0,   // not tested: the list is full and nearer than the face's bound
  kOfferNotCovered = 1,      // inside, but degenerate weights or beyond far
  kOfferBehind = 2,          // covered, behind the list's K-th fragment
  kOfferInserted = 3
};

// Offer face f (setup fs, depth lower bound zl) to the pixel centre (qx, qy)
// whose list holds `count` entries: the per-pixel step of both rasterizers
// (they differ only in which faces they offer, and in what order, which does
// not change the result). The caller has checked that the pixel lies in the
// face's pixel_box.
template <typename T>
DNMP_HD Offer offer_face(const FaceSetup<T>& fs, T zl, int64_t f, T qx, T qy, T far, Frag<T>* list, int& count,
                         int K) {
  if (count == K && zl > list[K - 1].z) return kOfferDepthRejected;  // exact: no depth below zl
  T z, a[3], ssum, b[3];
  bool outside;
  if (!cover_pixel(fs, qx, qy, far, z, a, ssum, outside)) return outside ? kOfferOutside : kOfferNotCovered;
  if (count == K && !frag_less(z, f, list[K - 1])) return kOfferBehind;
  finish_bary(a, ssum, b);
  insert_k(list, count, K, z, f, b);
  return kOfferInserted;
}

// ---------------------------------------------------------------------------
// Backward. For camera-space vertices P0..P2 and the pixel ray d =
// ((x - cx) / fx, (y - cy) / fy, 1), the perspective-correct barycentrics and
// depth are (with [a, b, c] = a . (b x c)):
//   n_i = [d, P_j, P_k]  (i, j, k cyclic),  D = n_0 + n_1 + n_2,
//   bary_i = n_i / D,    z = [P0, P1, P2] / D.
// (Equal to the screen-space formula used in the forward.) Given dL/dbary and
// dL/dz this returns dL/dP_i (camera frame), computed in double.
DNMP_HD void cross3(const double a[3], const double b[3], double out[3]) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}

DNMP_HD double dot3(const double a[3], const double b[3]) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

// Returns false (and leaves grad zero) for a degenerate configuration.
DNMP_HD bool fragment_backward(const double P[3][3], const double d[3], const double g_bary[3], double g_z,
                               double gP[3][3]) {
  for (int i = 0; i < 3; ++i)
    for (int c = 0; c < 3; ++c) gP[i][c] = 0.0;
  double n[3], cr[3];
  for (int i = 0; i < 3; ++i) {
    cross3(P[(i + 1) % 3], P[(i + 2) % 3], cr);
    n[i] = dot3(d, cr);
  }
  double D = n[0] + n[1] + n[2];
  cross3(P[1], P[2], cr);
  double Tv = dot3(P[0], cr);
  if (!(D != 0.0) || !(D - D == 0.0)) return false;
  double invD = 1.0 / D;
  double sb = g_bary[0] * n[0] + g_bary[1] * n[1] + g_bary[2] * n[2];
  // dL/dn_i and dL/dT
  double common = -(sb + g_z * Tv) * invD * invD;
  double gn[3];
  for (int i = 0; i < 3; ++i) gn[i] = g_bary[i] * invD + common;
  double gT = g_z * invD;
  for (int i = 0; i < 3; ++i) {
    int j = (i + 1) % 3, k = (i + 2) % 3;
    // n_i = [d, P_j, P_k]: d/dP_j = P_k x d, d/dP_k = d x P_j
    double t1[3], t2[3];
    cross3(P[k], d, t1);
    cross3(d, P[j], t2);
    // T = [P_i, P_j, P_k] (cyclic): d/dP_i = P_j x P_k
    double t3[3];
    cross3(P[j], P[k], t3);
    for (int c = 0; c < 3; ++c) {
      gP[j][c] += gn[i] * t1[c];
      gP[k][c] += gn[i] * t2[c];
      gP[i][c] += gT * t3[c];
    }
  }
  return true;
}

// World-frame gradient of one fragment of face f at pixel (x, y): out[3 * j + c]
// is dL/d verts[faces[3 * f + j]][c] for the fragment's dL/dbary g_b and dL/dz
// g_z. Returns false (out untouched) when the fragment contributes nothing: zero
// incoming gradient or a degenerate configuration. Shared by the CPU and CUDA
// backward so both add exactly the same per-fragment values.
template <typename T, typename I>
DNMP_HD bool fragment_world_grad(const T* verts, const I* faces, int64_t f, const Camera<double>& cam, double x,
                                 double y, const double g_b[3], double g_z, double out[9]) {
  if (g_z == 0.0 && g_b[0] == 0.0 && g_b[1] == 0.0 && g_b[2] == 0.0) return false;
  const double d[3] = {(x - cam.cx) / cam.fx, (y - cam.cy) / cam.fy, 1.0};
  double P[3][3];
  for (int j = 0; j < 3; ++j) {
    const T* X = verts + 3 * int64_t(faces[3 * f + j]);
    for (int r = 0; r < 3; ++r)
      P[j][r] = cam.r[r][0] * double(X[0]) + cam.r[r][1] * double(X[1]) + cam.r[r][2] * double(X[2]) + cam.r[r][3];
  }
  double gP[3][3];
  if (!fragment_backward(P, d, g_b, g_z, gP)) return false;
  for (int j = 0; j < 3; ++j)  // world gradient: R^T * gP
    for (int c = 0; c < 3; ++c)
      out[3 * j + c] = cam.r[0][c] * gP[j][0] + cam.r[1][c] * gP[j][1] + cam.r[2][c] * gP[j][2];
  return true;
}

}  // namespace dnmp
