// CUDA rasterizer and its backward, built on the same csrc/common/ math as the
// CPU path (so results agree bit for bit with --fmad=false).
//
// Forward: one thread per vertex (projection), per face (setup + cull), then one
// thread per pixel walking the faces in index order with a per-pixel K-list in
// global scratch memory. This is the simple O(pixels x faces) schedule; it is
// deterministic and correct, and tiling/binning (as on the CPU) is the next
// step if the GPU path becomes hot.
// Backward: per-fragment vertex gradients in parallel (double), then a fixed-order
// segmented reduction per vertex (stable sort by vertex id), so gradients are
// bit-identical from run to run (no atomics).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/raster_math.h"
#include "cuda/segment_reduce.cuh"
#include "ops.h"

namespace dnmp {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) { return int((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void project_kernel(const T* verts, int64_t V, Camera<T> cam, T near, ProjVert<T>* pv) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= V) return;
  pv[i] = project_vertex(cam, verts[3 * i], verts[3 * i + 1], verts[3 * i + 2], near);
}

template <typename T>
__global__ void setup_kernel(const ProjVert<T>* pv, const int64_t* faces, int64_t F, FaceSetup<T>* fs,
                             uint8_t* valid) {
  int64_t f = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (f >= F) return;
  valid[f] = setup_face(pv[faces[3 * f]], pv[faces[3 * f + 1]], pv[faces[3 * f + 2]], fs[f]) ? 1 : 0;
}

template <typename T>
__global__ void raster_kernel(const FaceSetup<T>* fs, const uint8_t* valid, int64_t F, int H, int W, int K, T far,
                              Frag<T>* scratch, int64_t* p2f, T* zbuf, T* bary) {
  int64_t pix = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pix >= int64_t(H) * W) return;
  const T x = T(pix % W), y = T(pix / W);
  Frag<T>* lst = scratch + pix * K;
  int cnt = 0;
  for (int64_t f = 0; f < F; ++f) {
    if (!valid[f]) continue;
    const FaceSetup<T>& s = fs[f];
    if (x < s.umin || x > s.umax || y < s.vmin || y > s.vmax) continue;
    T z, a[3], ssum, b[3];
    if (!cover_pixel(s, x, y, far, z, a, ssum)) continue;
    if (cnt == K && !frag_less(z, f, lst[K - 1])) continue;
    finish_bary(a, ssum, b);
    insert_k(lst, cnt, K, z, f, b);
  }
  for (int k = 0; k < K; ++k) {
    const int64_t o = pix * K + k;
    if (k < cnt) {
      p2f[o] = lst[k].face;
      zbuf[o] = lst[k].z;
      for (int j = 0; j < 3; ++j) bary[3 * o + j] = lst[k].b[j];
    } else {
      p2f[o] = -1;
      zbuf[o] = T(-1);
      for (int j = 0; j < 3; ++j) bary[3 * o + j] = T(0);
    }
  }
}

// Per-fragment world-space vertex gradients: out[n*9 + 3*j + c], key[n*3 + j] = vertex id or -1.
template <typename T>
__global__ void raster_bwd_kernel(const T* verts, const int64_t* faces, Camera<double> cam, int H, int W, int K,
                                  const int64_t* p2f, const T* gz, const T* gb, int64_t N, double* out,
                                  int64_t* key) {
  int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int64_t f = p2f[n];
  for (int j = 0; j < 9; ++j) out[9 * n + j] = 0.0;
  for (int j = 0; j < 3; ++j) key[3 * n + j] = f < 0 ? -1 : faces[3 * f + j];
  if (f < 0) return;
  const int64_t pix = (n / K) % (int64_t(H) * W);
  const double x = double(pix % W), y = double(pix / W);
  const double d[3] = {(x - cam.cx) / cam.fx, (y - cam.cy) / cam.fy, 1.0};
  double P[3][3];
  for (int j = 0; j < 3; ++j) {
    const T* X = verts + 3 * faces[3 * f + j];
    for (int r = 0; r < 3; ++r)
      P[j][r] = cam.r[r][0] * double(X[0]) + cam.r[r][1] * double(X[1]) + cam.r[r][2] * double(X[2]) + cam.r[r][3];
  }
  const double g_b[3] = {double(gb[3 * n]), double(gb[3 * n + 1]), double(gb[3 * n + 2])};
  double gP[3][3];
  if (!fragment_backward(P, d, g_b, double(gz[n]), gP)) return;
  for (int j = 0; j < 3; ++j)
    for (int c = 0; c < 3; ++c)
      out[9 * n + 3 * j + c] = cam.r[0][c] * gP[j][0] + cam.r[1][c] * gP[j][1] + cam.r[2][c] * gP[j][2];
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rasterize_fwd_cuda(const at::Tensor& verts_, const at::Tensor& faces_,
                                                                  const at::Tensor& intrinsics_,
                                                                  const at::Tensor& world_to_cam_, int64_t height,
                                                                  int64_t width, int64_t faces_per_pixel,
                                                                  double near, double far) {
  check_rasterize_args(verts_, faces_, intrinsics_, world_to_cam_, height, width, faces_per_pixel, near, far);
  const c10::cuda::CUDAGuard guard(verts_.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto verts = verts_.contiguous();
  const auto faces = faces_.to(at::kLong).contiguous();
  check_face_indices(faces, verts.size(0), "verts");
  const auto K3 = intrinsics_.to(at::kCPU, verts.scalar_type()).contiguous();
  const auto M4 = world_to_cam_.to(at::kCPU, verts.scalar_type()).contiguous();
  const int64_t B = K3.size(0), H = height, W = width, K = faces_per_pixel, V = verts.size(0), F = faces.size(0);
  auto p2f = at::empty({B, H, W, K}, verts.options().dtype(at::kLong));
  auto zbuf = at::empty({B, H, W, K}, verts.options());
  auto bary = at::empty({B, H, W, K, 3}, verts.options());
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_fwd_cuda", [&] {
    using T = scalar_t;
    auto pv = at::empty({int64_t(sizeof(ProjVert<T>)) * std::max<int64_t>(V, 1)}, verts.options().dtype(at::kByte));
    auto fs = at::empty({int64_t(sizeof(FaceSetup<T>)) * std::max<int64_t>(F, 1)}, verts.options().dtype(at::kByte));
    auto valid = at::empty({std::max<int64_t>(F, 1)}, verts.options().dtype(at::kByte));
    auto scratch = at::empty({int64_t(sizeof(Frag<T>)) * H * W * K}, verts.options().dtype(at::kByte));
    auto* pvp = reinterpret_cast<ProjVert<T>*>(pv.data_ptr<uint8_t>());
    auto* fsp = reinterpret_cast<FaceSetup<T>*>(fs.data_ptr<uint8_t>());
    const int64_t plane = H * W * K;
    for (int64_t b = 0; b < B; ++b) {
      const Camera<T> cam = camera_from<T>(K3[b], M4[b]);
      if (V > 0) project_kernel<T><<<blocks_for(V), kThreads, 0, stream>>>(verts.data_ptr<T>(), V, cam, T(near), pvp);
      if (F > 0)
        setup_kernel<T><<<blocks_for(F), kThreads, 0, stream>>>(pvp, faces.data_ptr<int64_t>(), F, fsp,
                                                                valid.data_ptr<uint8_t>());
      raster_kernel<T><<<blocks_for(H * W), kThreads, 0, stream>>>(
          fsp, valid.data_ptr<uint8_t>(), F, int(H), int(W), int(K), T(far),
          reinterpret_cast<Frag<T>*>(scratch.data_ptr<uint8_t>()), p2f.data_ptr<int64_t>() + b * plane,
          zbuf.data_ptr<T>() + b * plane, bary.data_ptr<T>() + 3 * b * plane);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {p2f, zbuf, bary};
}

at::Tensor rasterize_bwd_cuda(const at::Tensor& verts_, const at::Tensor& faces_, const at::Tensor& intrinsics_,
                              const at::Tensor& world_to_cam_, const at::Tensor& pix_to_face_,
                              const at::Tensor& grad_zbuf_, const at::Tensor& grad_bary_) {
  check_rasterize_args(verts_, faces_, intrinsics_, world_to_cam_, 1, 1, 1, 0.0, 1.0);
  check_raster_grads(verts_, intrinsics_, pix_to_face_, grad_zbuf_, grad_bary_);
  const c10::cuda::CUDAGuard guard(verts_.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto verts = verts_.contiguous();
  const auto faces = faces_.to(at::kLong).contiguous();
  const auto p2f = pix_to_face_.contiguous();
  const auto gz = grad_zbuf_.to(verts.scalar_type()).contiguous();
  const auto gb = grad_bary_.to(verts.scalar_type()).contiguous();
  check_face_indices(faces, verts.size(0), "verts");
  check_pix_to_face(p2f, faces.size(0));
  const auto K3 = intrinsics_.to(at::kCPU, at::kDouble).contiguous();
  const auto M4 = world_to_cam_.to(at::kCPU, at::kDouble).contiguous();
  const int64_t B = p2f.size(0), H = p2f.size(1), W = p2f.size(2), K = p2f.size(3);
  const int64_t plane = H * W * K;
  auto contrib = at::empty({B * plane, 9}, verts.options().dtype(at::kDouble));
  auto key = at::empty({B * plane * 3}, verts.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_bwd_cuda", [&] {
    using T = scalar_t;
    for (int64_t b = 0; b < B; ++b) {
      const Camera<double> cam = camera_from<double>(K3[b], M4[b]);
      if (plane == 0) continue;
      raster_bwd_kernel<T><<<blocks_for(plane), kThreads, 0, stream>>>(
          verts.data_ptr<T>(), faces.data_ptr<int64_t>(), cam, int(H), int(W), int(K),
          p2f.data_ptr<int64_t>() + b * plane, gz.data_ptr<T>() + b * plane, gb.data_ptr<T>() + 3 * b * plane,
          plane, contrib.data_ptr<double>() + 9 * b * plane, key.data_ptr<int64_t>() + 3 * b * plane);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  // rows of 3 values per (fragment, vertex slot), summed per vertex in fixed order
  auto out = segment_sum_by_key(key, contrib.view({-1, 3}), verts.size(0));
  return out.to(verts.scalar_type());
}

}  // namespace dnmp
