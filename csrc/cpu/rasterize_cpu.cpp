// CPU rasterizer: per-vertex projection, per-face setup and culling, binning of
// faces into screen tiles (counting sort, exact sizes, no capacity limit), and
// per-tile K-nearest insertion. Work scales with the pixels each face covers.
//
// Determinism: each tile's face list is in increasing face order whatever the
// thread count, and each pixel is written by one tile, so the forward output
// does not depend on scheduling. The backward computes per-fragment vertex
// gradients in parallel into a buffer, then adds them up serially in fragment
// order (in double), so it is bit-identical across runs and thread counts.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "common/raster_math.h"
#include "ops.h"

namespace dnmp {
namespace {

constexpr int kTile = 16;              // tile edge in pixels
constexpr int64_t kFaceChunk = 8192;  // min faces per binning chunk (result does not depend on it)

// Run fn(i) for i in [0, n) on all threads, items taken from a shared counter:
// a thread slowed down by other load on its core does not hold the others back
// (results never depend on which thread runs which item).
template <typename Fn>
void dynamic_for(int64_t n, const Fn& fn) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  });
}

template <typename T>
bool face_pixel_box(const FaceSetup<T>& fs, int H, int W, int& x0, int& x1, int& y0, int& y1) {
  return pixel_box(fs.umin, fs.umax, fs.vmin, fs.vmax, H, W, x0, x1, y0, y1);
}

template <typename T>
bool face_setup(const std::vector<ProjVert<T>>& pv, const int64_t* faces, int64_t f, FaceSetup<T>& fs) {
  return setup_face(pv[faces[3 * f]], pv[faces[3 * f + 1]], pv[faces[3 * f + 2]], fs);
}

template <typename T>
void rasterize_view(const T* verts, int64_t V, const int64_t* faces, int64_t F, const Camera<T>& cam, int H, int W,
                    int K, T near, T far, int64_t* out_p2f, T* out_z, T* out_b) {
  static const bool prof = std::getenv("DNMP_PROFILE") != nullptr;
  auto tic = std::chrono::steady_clock::now();
  auto lap = [&](const char* what) {
    if (!prof) return;
    auto now = std::chrono::steady_clock::now();
    std::fprintf(stderr, "  %-10s %8.2f ms\n", what, std::chrono::duration<double, std::milli>(now - tic).count());
    tic = now;
  };
  // 1. vertices -> image
  std::vector<ProjVert<T>> pv(V);
  constexpr int64_t kVertChunk = 8192;
  dynamic_for((V + kVertChunk - 1) / kVertChunk, [&](int64_t c) {
    const int64_t e = std::min(V, (c + 1) * kVertChunk);
    for (int64_t i = c * kVertChunk; i < e; ++i)
      pv[i] = project_vertex(cam, verts[3 * i], verts[3 * i + 1], verts[3 * i + 2], near);
  });

  lap("project");
  // 2. per-face setup + culling -> tile counts per chunk of faces
  const int TX = (W + kTile - 1) / kTile, TY = (H + kTile - 1) / kTile;
  const int64_t NT = int64_t(TX) * TY;
  // chunks of faces, taken dynamically; at most 64 and at most ~4M counters
  const int64_t NC = std::max<int64_t>(
      1, std::min<int64_t>({(F + kFaceChunk - 1) / kFaceChunk, int64_t(64), std::max<int64_t>(1, (int64_t(1) << 22) / NT)}));
  const int64_t per_chunk = (F + NC - 1) / NC;
  std::unique_ptr<int32_t[]> box(new int32_t[4 * F]);  // x0, x1, y0, y1 in tiles; x0 = -1 when culled
  std::unique_ptr<T[]> zlow(new T[F]);  // depth_lower_bound per face
  std::vector<int64_t> counts(NC * NT, 0);
  dynamic_for(NC, [&](int64_t c) {
    {
      int64_t* cnt = counts.data() + c * NT;
      int64_t fe = std::min(F, (c + 1) * per_chunk);
      for (int64_t f = c * per_chunk; f < fe; ++f) {
        T fb[4], zmin;
        int x0, x1, y0, y1;
        int32_t* bx = box.get() + 4 * f;
        if (!cull_face(pv[faces[3 * f]], pv[faces[3 * f + 1]], pv[faces[3 * f + 2]], fb, zmin) ||
            !pixel_box(fb[0], fb[1], fb[2], fb[3], H, W, x0, x1, y0, y1)) {
          bx[0] = -1;
          continue;
        }
        zlow[f] = depth_lower_bound(zmin);
        bx[0] = x0 / kTile;
        bx[1] = x1 / kTile;
        bx[2] = y0 / kTile;
        bx[3] = y1 / kTile;
        for (int ty = bx[2]; ty <= bx[3]; ++ty)
          for (int tx = bx[0]; tx <= bx[1]; ++tx) ++cnt[int64_t(ty) * TX + tx];
      }
    }
  });

  lap("setup");
  // 3. exclusive prefix sum in (tile, chunk) order -> every tile list is sorted by face index
  std::vector<int64_t> tile_begin(NT + 1);
  int64_t total = 0;
  for (int64_t t = 0; t < NT; ++t) {
    tile_begin[t] = total;
    for (int64_t c = 0; c < NC; ++c) {
      int64_t n = counts[c * NT + t];
      counts[c * NT + t] = total;
      total += n;
    }
  }
  tile_begin[NT] = total;

  lap("prefix");
  // 4. fill the lists
  // entries (depth lower bound, face): the tile loop pops them nearest first
  std::vector<std::pair<T, int32_t>> list(total);
  dynamic_for(NC, [&](int64_t c) {
    {
      int64_t* off = counts.data() + c * NT;
      int64_t fe = std::min(F, (c + 1) * per_chunk);
      for (int64_t f = c * per_chunk; f < fe; ++f) {
        const int32_t* bx = box.get() + 4 * f;
        if (bx[0] < 0) continue;
        for (int ty = bx[2]; ty <= bx[3]; ++ty)
          for (int tx = bx[0]; tx <= bx[1]; ++tx) list[off[int64_t(ty) * TX + tx]++] = {zlow[f], int32_t(f)};
      }
    }
  });

  lap("fill");
  // 5. rasterize tiles; threads take the next tile from a shared counter (load
  //    balance). Output per pixel depends only on its tile's list: deterministic.
  std::atomic<int64_t> next_tile{0};
  std::atomic<int64_t> c_faces{0}, c_tests{0}, c_zrej{0}, c_cov{0}, c_ins{0};
  const int64_t nthreads = at::get_num_threads();
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    std::vector<Frag<T>> buf(size_t(kTile) * kTile * K);
    std::vector<int> cnt(kTile * kTile);
    for (;;) {
      int64_t t = next_tile.fetch_add(1);
      if (t >= NT) break;
      const int tx = int(t % TX), ty = int(t / TX);
      const int px0 = tx * kTile, py0 = ty * kTile;
      const int px1 = std::min(W, px0 + kTile) - 1, py1 = std::min(H, py0 + kTile) - 1;
      std::fill(cnt.begin(), cnt.end(), 0);
      // Front to back by depth lower bound: lists fill with near fragments first,
      // so farther faces are rejected cheaply, and once a face's bound is behind
      // every pixel's K-th depth, all remaining faces are too. A binary min-heap
      // (in place, O(n) to build) yields the order lazily: most faces of a tile
      // are never popped. The result does not depend on the order (insertion
      // uses the strict (z, face) order).
      auto* heap_begin = list.data() + tile_begin[t];
      auto* heap_end = list.data() + tile_begin[t + 1];
      const auto later = [](const std::pair<T, int32_t>& x, const std::pair<T, int32_t>& y) { return y < x; };
      std::make_heap(heap_begin, heap_end, later);
      T tile_far = std::numeric_limits<T>::infinity();  // max over the tile's pixels of the K-th depth
      bool dirty = false;  // lists changed since tile_far was computed
      for (size_t i = 0; heap_end != heap_begin; ++i) {
        std::pop_heap(heap_begin, heap_end, later);
        --heap_end;
        const T zl = heap_end->first;
        const int64_t f = heap_end->second;
        if (dirty && (i & 7) == 0) {
          dirty = false;
          tile_far = T(0);
          for (int y = py0; y <= py1 && tile_far != std::numeric_limits<T>::infinity(); ++y)
            for (int x = px0; x <= px1; ++x) {
              const int l = (y - py0) * kTile + (x - px0);
              const T zk = cnt[l] < K ? std::numeric_limits<T>::infinity() : buf[size_t(l) * K + K - 1].z;
              tile_far = std::max(tile_far, zk);
            }
        }
        if (zl > tile_far) break;  // this and all later faces are behind every full list
        if (prof) c_faces++;
        FaceSetup<T> fs;
        int x0, x1, y0, y1;
        if (!face_setup(pv, faces, f, fs) || !face_pixel_box(fs, H, W, x0, x1, y0, y1)) continue;  // never: binned
        x0 = std::max(x0, px0);
        x1 = std::min(x1, px1);
        y0 = std::max(y0, py0);
        y1 = std::min(y1, py1);
        for (int y = y0; y <= y1; ++y) {
          for (int x = x0; x <= x1; ++x) {
            const int l = (y - py0) * kTile + (x - px0);
            Frag<T>* lst = buf.data() + size_t(l) * K;
            const Offer r = offer_face(fs, zl, f, T(x), T(y), far, lst, cnt[l], K);
            if (r == kOfferInserted) dirty = true;
            if (prof) {
              c_tests++;
              if (r == kOfferDepthRejected) c_zrej++;
              if (r >= kOfferBehind) c_cov++;
              if (r == kOfferInserted) c_ins++;
            }
          }
        }
      }
      for (int y = py0; y <= py1; ++y) {
        for (int x = px0; x <= px1; ++x) {
          const int l = (y - py0) * kTile + (x - px0);
          const Frag<T>* fr = buf.data() + size_t(l) * K;
          const int64_t o = (int64_t(y) * W + x) * K;
          for (int k = 0; k < K; ++k) {
            if (k < cnt[l]) {
              out_p2f[o + k] = fr[k].face;
              out_z[o + k] = fr[k].z;
              for (int j = 0; j < 3; ++j) out_b[3 * (o + k) + j] = fr[k].b[j];
            } else {
              out_p2f[o + k] = -1;
              out_z[o + k] = T(-1);
              for (int j = 0; j < 3; ++j) out_b[3 * (o + k) + j] = T(0);
            }
          }
        }
      }
    }
  });
  lap("raster");
  if (prof) std::fprintf(stderr, "  pairs=%lld tiles=%lld faces=%lld tests=%lld zrej=%lld cov=%lld ins=%lld\n", (long long)total, (long long)NT, (long long)c_faces, (long long)c_tests, (long long)c_zrej, (long long)c_cov, (long long)c_ins);
}

constexpr int64_t kBwdBlock = 1 << 16;  // fragments per backward block

template <typename T>
void rasterize_bwd_view(const T* verts, const int64_t* faces, const Camera<T>& camT, int H, int W, int K,
                        const int64_t* p2f, const T* gz, const T* gb, std::vector<double>& acc) {
  const Camera<double> cam = camera_to_double(camT);
  const int64_t N = int64_t(H) * W * K;
  std::vector<double> buf(size_t(std::min(N, kBwdBlock)) * 9);
  std::vector<int64_t> vid(size_t(std::min(N, kBwdBlock)) * 3);  // vertex ids, -1: no contribution
  const int64_t V = int64_t(acc.size() / 3);
  for (int64_t n0 = 0; n0 < N; n0 += kBwdBlock) {
    const int64_t nb = std::min(kBwdBlock, N - n0);
    at::parallel_for(0, nb, 1024, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t n = n0 + i;
        const int64_t f = p2f[n];
        vid[3 * i] = vid[3 * i + 1] = vid[3 * i + 2] = -1;
        if (f < 0) continue;
        const int64_t pix = n / K;
        const double g_b[3] = {double(gb[3 * n]), double(gb[3 * n + 1]), double(gb[3 * n + 2])};
        if (!fragment_world_grad(verts, faces, f, cam, double(pix % W), double(pix / W), g_b, double(gz[n]),
                                 buf.data() + 9 * i))
          continue;
        for (int j = 0; j < 3; ++j) vid[3 * i + j] = faces[3 * f + j];
      }
    });
    // Reduction: each vertex is summed by one owner of a vertex range, always in
    // fragment order, so the result does not depend on how ranges map to threads.
    const int64_t nranges = std::max<int64_t>(1, at::get_num_threads());
    const int64_t span = (V + nranges - 1) / nranges;
    at::parallel_for(0, nranges, 1, [&](int64_t rb, int64_t re) {
      const int64_t lo = rb * span, hi = std::min(V, re * span);
      for (int64_t k = 0; k < 3 * nb; ++k) {
        const int64_t v = vid[k];
        if (v < lo || v >= hi) continue;
        const double* o = buf.data() + 3 * k;  // 9 * (k / 3) + 3 * (k % 3)
        double* a = acc.data() + 3 * v;
        a[0] += o[0];
        a[1] += o[1];
        a[2] += o[2];
      }
    });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rasterize_fwd_cpu(const at::Tensor& verts_, const at::Tensor& faces_,
                                                                 const at::Tensor& intrinsics_,
                                                                 const at::Tensor& world_to_cam_, int64_t height,
                                                                 int64_t width, int64_t faces_per_pixel, double near,
                                                                 double far) {
  check_rasterize_args(verts_, faces_, intrinsics_, world_to_cam_, height, width, faces_per_pixel, near, far);
  TORCH_CHECK_VALUE(faces_.size(0) < std::numeric_limits<int32_t>::max(), "too many faces (", faces_.size(0), ")");
  TORCH_CHECK_VALUE(height < (1 << 30) && width < (1 << 30), "image too large");
  const auto verts = verts_.contiguous();
  const auto faces = faces_.to(at::kLong).contiguous();
  const auto K3 = intrinsics_.to(verts.scalar_type()).contiguous();
  const auto M4 = world_to_cam_.to(verts.scalar_type()).contiguous();
  const int64_t B = K3.size(0), H = height, W = width, K = faces_per_pixel;
  auto p2f = at::empty({B, H, W, K}, verts.options().dtype(at::kLong));
  auto zbuf = at::empty({B, H, W, K}, verts.options());
  auto bary = at::empty({B, H, W, K, 3}, verts.options());
  check_face_indices(faces, verts.size(0), "verts");
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_fwd_cpu", [&] {
    for (int64_t b = 0; b < B; ++b) {
      const Camera<scalar_t> cam = camera_from<scalar_t>(K3[b], M4[b]);
      const int64_t plane = H * W * K;
      rasterize_view<scalar_t>(verts.data_ptr<scalar_t>(), verts.size(0), faces.data_ptr<int64_t>(), faces.size(0),
                               cam, int(H), int(W), int(K), scalar_t(near), scalar_t(far),
                               p2f.data_ptr<int64_t>() + b * plane, zbuf.data_ptr<scalar_t>() + b * plane,
                               bary.data_ptr<scalar_t>() + 3 * b * plane);
    }
  });
  return {p2f, zbuf, bary};
}

at::Tensor rasterize_bwd_cpu(const at::Tensor& verts_, const at::Tensor& faces_, const at::Tensor& intrinsics_,
                             const at::Tensor& world_to_cam_, const at::Tensor& pix_to_face_,
                             const at::Tensor& grad_zbuf_, const at::Tensor& grad_bary_) {
  check_rasterize_args(verts_, faces_, intrinsics_, world_to_cam_, 1, 1, 1, 0.0, 1.0);
  check_raster_grads(verts_, intrinsics_, pix_to_face_, grad_zbuf_, grad_bary_);
  const auto verts = verts_.contiguous();
  const auto faces = faces_.to(at::kLong).contiguous();
  const auto K3 = intrinsics_.to(verts.scalar_type()).contiguous();
  const auto M4 = world_to_cam_.to(verts.scalar_type()).contiguous();
  const auto p2f = pix_to_face_.contiguous();
  const auto gz = grad_zbuf_.to(verts.scalar_type()).contiguous();
  const auto gb = grad_bary_.to(verts.scalar_type()).contiguous();
  const int64_t B = p2f.size(0), H = p2f.size(1), W = p2f.size(2), K = p2f.size(3);
  check_face_indices(faces, verts.size(0), "verts");
  check_pix_to_face(p2f, faces.size(0));
  std::vector<double> acc(size_t(verts.size(0)) * 3, 0.0);
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_bwd_cpu", [&] {
    const int64_t plane = H * W * K;
    for (int64_t b = 0; b < B; ++b) {
      const Camera<scalar_t> cam = camera_from<scalar_t>(K3[b], M4[b]);
      rasterize_bwd_view<scalar_t>(verts.data_ptr<scalar_t>(), faces.data_ptr<int64_t>(), cam, int(H), int(W),
                                   int(K), p2f.data_ptr<int64_t>() + b * plane, gz.data_ptr<scalar_t>() + b * plane,
                                   gb.data_ptr<scalar_t>() + 3 * b * plane, acc);
    }
  });
  auto out = at::from_blob(acc.data(), {verts.size(0), 3}, at::TensorOptions().dtype(at::kDouble));
  return out.to(verts.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

}  // namespace dnmp
