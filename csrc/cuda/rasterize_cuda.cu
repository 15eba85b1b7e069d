// CUDA rasterizer and its backward, built on the same csrc/common/ math as the
// CPU path (projection, face setup, coverage, K-nearest insertion, per-fragment
// backward), compiled with --fmad=false so the two round alike.
//
// Forward, per view (tiled, cost ~ pixels each face covers):
//   1. project_kernel: one thread per vertex.
//   2. bin_count_kernel: one thread per face: setup + cull, its 16x16-tile box,
//      the number of tiles it overlaps, and a depth lower bound.
//   3. inclusive scan of the counts (exact total; no per-bin capacity, so no
//      face can be dropped).
//   4. bin_fill_kernel: one (key, face) pair per (face, tile), key = tile << 32 |
//      bits of the face's depth lower bound rounded down to float (positive
//      floats order like their bits); radix sort by key groups the pairs by
//      tile, nearest first; searchsorted gives each tile's range.
//   5. raster_tiles_kernel: one block of 16x16 threads per tile, one thread per
//      pixel; faces staged through shared memory in chunks; per-pixel K-nearest
//      insertion in registers/local memory; the block stops when every pixel's
//      list is full and nearer than the next chunk's bound (exact: keys are
//      sorted and never above the true lower bound).
//   The result does not depend on the order faces arrive in (insertion uses the
//   strict (depth, face) order), so equal sort keys in any order give the same
//   output, equal to the CPU kernel's.
// Backward: per-fragment world-space vertex gradients in parallel (double,
// fragment_world_grad, as on the CPU), then a fixed-order segmented sum per
// vertex (stable sort by vertex id): bit-identical run to run, no atomics, and
// summed in the same order as the CPU backward.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <limits>

#include "common/raster_math.h"
#include "cuda/ops_cuda.h"
#include "cuda/segment_reduce.cuh"
#include "ops.h"

namespace dnmp {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 16;   // tile edge in pixels; one thread per pixel
constexpr int kChunk = 128;  // faces staged in shared memory at a time

inline int blocks_for(int64_t n) { return int((n + kThreads - 1) / kThreads); }

// Rounded-down float of a non-negative depth bound, as the low 32 bits of a
// sort key (IEEE order of non-negative floats equals the order of their bits).
__device__ __forceinline__ uint32_t depth_key(float z) { return __float_as_uint(z); }
__device__ __forceinline__ uint32_t depth_key(double z) { return __float_as_uint(__double2float_rd(z)); }

template <typename T>
__global__ void project_kernel(const T* verts, int64_t V, const T* Kmat, const T* Mmat, T near, ProjVert<T>* pv) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= V) return;
  const Camera<T> cam = camera_from_ptr(Kmat, Mmat);
  pv[i] = project_vertex(cam, verts[3 * i], verts[3 * i + 1], verts[3 * i + 2], near);
}

// counts[f]: tiles overlapped by face f (0 when culled); tbox[f]: tile range.
template <typename T>
__global__ void bin_count_kernel(const ProjVert<T>* pv, const int64_t* faces, int64_t F, int H, int W,
                                 FaceSetup<T>* fs, T* zlow, int4* tbox, int64_t* counts) {
  const int64_t f = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (f >= F) return;
  FaceSetup<T> s;
  int x0, x1, y0, y1;
  if (!setup_face(pv[faces[3 * f]], pv[faces[3 * f + 1]], pv[faces[3 * f + 2]], s) ||
      !pixel_box(s.umin, s.umax, s.vmin, s.vmax, H, W, x0, x1, y0, y1)) {
    counts[f] = 0;
    tbox[f] = make_int4(-1, -1, -1, -1);
    return;
  }
  fs[f] = s;
  zlow[f] = depth_lower_bound(min3(s.z[0], s.z[1], s.z[2]));
  const int4 b = make_int4(x0 / kTile, x1 / kTile, y0 / kTile, y1 / kTile);
  tbox[f] = b;
  counts[f] = int64_t(b.y - b.x + 1) * (b.w - b.z + 1);
}

template <typename T>
__global__ void bin_fill_kernel(const int4* tbox, const T* zlow, const int64_t* ends, const int64_t* counts,
                                int64_t F, int TX, int64_t* keys, int32_t* vals) {
  const int64_t f = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (f >= F || counts[f] == 0) return;
  const int4 b = tbox[f];
  int64_t o = ends[f] - counts[f];
  const int64_t zk = int64_t(depth_key(zlow[f]));
  for (int ty = b.z; ty <= b.w; ++ty)
    for (int tx = b.x; tx <= b.y; ++tx, ++o) {
      keys[o] = ((int64_t(ty) * TX + tx) << 32) | zk;
      vals[o] = int32_t(f);
    }
}

// One block per tile, one thread per pixel. KMAX > 0: the K-list lives in a
// per-thread array (K <= KMAX); KMAX == 0: in global scratch (any K).
template <typename T, int KMAX>
__global__ void __launch_bounds__(kTile* kTile)
    raster_tiles_kernel(const FaceSetup<T>* fs, const T* zlow, const int64_t* keys, const int32_t* tface,
                        const int64_t* tile_start, int TX, int H, int W, int K, T far, Frag<T>* scratch,
                        int64_t* p2f, T* zbuf, T* bary) {
  __shared__ FaceSetup<T> s_fs[kChunk];
  __shared__ T s_zl[kChunk];
  __shared__ int32_t s_id[kChunk];
  const int tile = blockIdx.x;
  const int x = (tile % TX) * kTile + int(threadIdx.x) % kTile;
  const int y = (tile / TX) * kTile + int(threadIdx.x) / kTile;
  const bool inside = x < W && y < H;
  const int64_t pix = int64_t(y) * W + x;
  Frag<T> local[KMAX > 0 ? KMAX : 1];
  Frag<T>* lst = KMAX > 0 ? local : scratch + (inside ? pix : 0) * K;
  int cnt = 0;
  const T qx = T(x), qy = T(y);
  const int64_t begin = tile_start[tile], end = tile_start[tile + 1];
  for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
    // Every later face's depth is >= this chunk's first key (sorted, rounded down).
    const T next_bound = T(__uint_as_float(uint32_t(keys[c0] & 0xffffffffll)));
    const bool done = !inside || (cnt == K && next_bound > lst[K - 1].z);
    if (__syncthreads_and(done)) break;  // also: nobody still reads the previous chunk
    const int n = int(end - c0 < kChunk ? end - c0 : kChunk);
    if (int(threadIdx.x) < n) {
      const int32_t f = tface[c0 + threadIdx.x];
      s_id[threadIdx.x] = f;
      s_fs[threadIdx.x] = fs[f];
      s_zl[threadIdx.x] = zlow[f];
    }
    __syncthreads();
    if (inside) {
      for (int j = 0; j < n; ++j) {
        const FaceSetup<T>& s = s_fs[j];
        if (qx < s.umin || qx > s.umax || qy < s.vmin || qy > s.vmax) continue;  // = pixel_box
        offer_face(s, s_zl[j], int64_t(s_id[j]), qx, qy, far, lst, cnt, K);
      }
    }
  }
  if (!inside) return;
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

template <typename T, int KMAX>
void launch_tiles(int NT, cudaStream_t stream, const FaceSetup<T>* fs, const T* zlow, const int64_t* keys,
                  const int32_t* tface, const int64_t* tile_start, int TX, int H, int W, int K, T far,
                  Frag<T>* scratch, int64_t* p2f, T* zbuf, T* bary) {
  raster_tiles_kernel<T, KMAX><<<NT, kTile * kTile, 0, stream>>>(fs, zlow, keys, tface, tile_start, TX, H, W, K, far,
                                                                  scratch, p2f, zbuf, bary);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Per-fragment world-space vertex gradients: out[n*9 + 3*j + c], key[n*3 + j] = vertex id or -1.
template <typename T>
__global__ void raster_bwd_kernel(const T* verts, const int64_t* faces, const T* Kmat, const T* Mmat, int H, int W,
                                  int K, const int64_t* p2f, const T* gz, const T* gb, int64_t N, double* out,
                                  int64_t* key) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int64_t f = p2f[n];
  for (int j = 0; j < 3; ++j) key[3 * n + j] = -1;
  if (f < 0) return;
  const Camera<double> cam = camera_to_double(camera_from_ptr(Kmat, Mmat));
  const int64_t pix = n / K;
  const double g_b[3] = {double(gb[3 * n]), double(gb[3 * n + 1]), double(gb[3 * n + 2])};
  if (!fragment_world_grad(verts, faces, f, cam, double(pix % W), double(pix / W), g_b, double(gz[n]),
                           out + 9 * n))
    return;
  for (int j = 0; j < 3; ++j) key[3 * n + j] = faces[3 * f + j];
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rasterize_fwd_cuda(const at::Tensor& verts_, const at::Tensor& faces_,
                                                                  const at::Tensor& intrinsics_,
                                                                  const at::Tensor& world_to_cam_, int64_t height,
                                                                  int64_t width, int64_t faces_per_pixel,
                                                                  double near, double far) {
  check_rasterize_args(verts_, faces_, intrinsics_, world_to_cam_, height, width, faces_per_pixel, near, far);
  TORCH_CHECK_VALUE(faces_.size(0) < std::numeric_limits<int32_t>::max(), "too many faces (", faces_.size(0), ")");
  TORCH_CHECK_VALUE(height < (1 << 30) && width < (1 << 30), "image too large");
  const c10::cuda::CUDAGuard guard(verts_.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto verts = verts_.contiguous();
  const auto faces = faces_.to(at::kLong).contiguous();
  check_face_indices(faces, verts.size(0), "verts");
  // cameras stay on the device: kernels read them (no host round trip)
  const auto K3 = intrinsics_.to(verts.scalar_type()).contiguous();
  const auto M4 = world_to_cam_.to(verts.scalar_type()).contiguous();
  const int64_t B = K3.size(0), H = height, W = width, K = faces_per_pixel, V = verts.size(0), F = faces.size(0);
  const int TX = int((W + kTile - 1) / kTile), TY = int((H + kTile - 1) / kTile);
  const int64_t NT = int64_t(TX) * TY;
  TORCH_CHECK_VALUE(NT < (int64_t(1) << 31), "image too large (", NT, " tiles)");
  auto p2f = at::empty({B, H, W, K}, verts.options().dtype(at::kLong));
  auto zbuf = at::empty({B, H, W, K}, verts.options());
  auto bary = at::empty({B, H, W, K, 3}, verts.options());
  const auto byte = verts.options().dtype(at::kByte);
  const auto i64 = verts.options().dtype(at::kLong);
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_fwd_cuda", [&] {
    using T = scalar_t;
    auto pv = at::empty({int64_t(sizeof(ProjVert<T>)) * std::max<int64_t>(V, 1)}, byte);
    auto fs = at::empty({int64_t(sizeof(FaceSetup<T>)) * std::max<int64_t>(F, 1)}, byte);
    auto zlow = at::empty({std::max<int64_t>(F, 1)}, verts.options());
    auto tbox = at::empty({int64_t(sizeof(int4)) * std::max<int64_t>(F, 1)}, byte);
    auto counts = at::empty({std::max<int64_t>(F, 1)}, i64);
    at::Tensor scratch;
    const int kmax = K <= 4 ? 4 : K <= 16 ? 16 : 0;
    if (kmax == 0) scratch = at::empty({int64_t(sizeof(Frag<T>)) * H * W * K}, byte);
    auto* pvp = reinterpret_cast<ProjVert<T>*>(pv.data_ptr<uint8_t>());
    auto* fsp = reinterpret_cast<FaceSetup<T>*>(fs.data_ptr<uint8_t>());
    auto* tbp = reinterpret_cast<int4*>(tbox.data_ptr<uint8_t>());
    const auto bounds = at::arange(NT + 1, i64) * (int64_t(1) << 32);
    const int64_t plane = H * W * K;
    for (int64_t b = 0; b < B; ++b) {
      const T* Kb = K3.data_ptr<T>() + 9 * b;
      const T* Mb = M4.data_ptr<T>() + 16 * b;
      at::Tensor keys, tface, tile_start;
      int64_t total = 0;
      if (F > 0) {
        if (V > 0) {
          project_kernel<T><<<blocks_for(V), kThreads, 0, stream>>>(verts.data_ptr<T>(), V, Kb, Mb, T(near), pvp);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        bin_count_kernel<T><<<blocks_for(F), kThreads, 0, stream>>>(pvp, faces.data_ptr<int64_t>(), F, int(H),
                                                                    int(W), fsp, zlow.data_ptr<T>(), tbp,
                                                                    counts.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const auto ends = at::cumsum(counts.narrow(0, 0, F), 0);
        total = ends[F - 1].item<int64_t>();  // sizes the bins: the one host sync of the forward
        if (total > 0) {
          auto ukeys = at::empty({total}, i64);
          auto uvals = at::empty({total}, verts.options().dtype(at::kInt));
          bin_fill_kernel<T><<<blocks_for(F), kThreads, 0, stream>>>(
              tbp, zlow.data_ptr<T>(), ends.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), F, TX,
              ukeys.data_ptr<int64_t>(), uvals.data_ptr<int32_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          auto sorted = at::sort(ukeys, /*stable=*/false, /*dim=*/0, /*descending=*/false);
          keys = std::get<0>(sorted).contiguous();
          tface = uvals.index_select(0, std::get<1>(sorted)).contiguous();
          tile_start = at::searchsorted(keys, bounds).contiguous();
        }
      }
      if (total == 0) {  // nothing binned: every tile gets the empty range
        keys = at::zeros({1}, i64);
        tface = at::zeros({1}, verts.options().dtype(at::kInt));
        tile_start = at::zeros({NT + 1}, i64);
      }
      auto* sp = kmax == 0 ? reinterpret_cast<Frag<T>*>(scratch.data_ptr<uint8_t>()) : nullptr;
      auto* launch = kmax == 4 ? &launch_tiles<T, 4> : kmax == 16 ? &launch_tiles<T, 16> : &launch_tiles<T, 0>;
      launch(int(NT), stream.stream(), fsp, zlow.data_ptr<T>(), keys.data_ptr<int64_t>(), tface.data_ptr<int32_t>(),
             tile_start.data_ptr<int64_t>(), TX, int(H), int(W), int(K), T(far), sp,
             p2f.data_ptr<int64_t>() + b * plane, zbuf.data_ptr<T>() + b * plane, bary.data_ptr<T>() + 3 * b * plane);
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
  // as on the CPU: the camera in the vertices' dtype, then widened to double
  const auto K3 = intrinsics_.to(verts.scalar_type()).contiguous();
  const auto M4 = world_to_cam_.to(verts.scalar_type()).contiguous();
  const int64_t B = p2f.size(0), H = p2f.size(1), W = p2f.size(2), K = p2f.size(3);
  const int64_t plane = H * W * K;
  auto contrib = at::empty({B * plane, 9}, verts.options().dtype(at::kDouble));
  auto key = at::empty({B * plane * 3}, verts.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_bwd_cuda", [&] {
    using T = scalar_t;
    for (int64_t b = 0; b < B; ++b) {
      if (plane == 0) continue;
      raster_bwd_kernel<T><<<blocks_for(plane), kThreads, 0, stream>>>(
          verts.data_ptr<T>(), faces.data_ptr<int64_t>(), K3.data_ptr<T>() + 9 * b, M4.data_ptr<T>() + 16 * b,
          int(H), int(W), int(K), p2f.data_ptr<int64_t>() + b * plane, gz.data_ptr<T>() + b * plane,
          gb.data_ptr<T>() + 3 * b * plane, plane, contrib.data_ptr<double>() + 9 * b * plane,
          key.data_ptr<int64_t>() + 3 * b * plane);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  // rows of 3 values per (fragment, vertex slot), summed per vertex in fragment
  // order, views in order: the same additions, in the same order, as the CPU
  auto out = segment_sum_by_key(key, contrib.view({-1, 3}), verts.size(0));
  return out.to(verts.scalar_type());
}

}  // namespace dnmp
