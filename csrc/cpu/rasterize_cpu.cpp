// CPU rasterizer: per-vertex projection, per-face setup and culling, one sort of the
// faces by depth lower bound, binning into screen tiles in that order (counting sort,
// exact sizes, no capacity limit), and per-tile K-nearest insertion nearest-first.
// Work scales with the pixels each face covers.
//
// Determinism: each tile's face list is in (depth key, face index) order whatever the
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
#include <cstring>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "common/raster_math.h"
#include "cpu/cpu_helpers.h"
#include "ops.h"

namespace dnmp {
namespace {

constexpr int kTile = 16;              // tile edge in pixels
constexpr int64_t kFaceChunk = 8192;  // min faces per binning chunk (result does not depend on it)
constexpr int kPrefetch = 4;          // tile-list entries read ahead (timing only)

// Sort keys of depth lower bounds: the bits of the largest float <= z with the low
// kKeyDropBits of its mantissa cleared, so that the key, read back as a float
// (key_depth), is still a lower bound of the face's depths (relative precision 2^-13,
// only rejections become a little less eager) and the keys sort in two radix passes.
constexpr int kKeyDropBits = 10;

inline float float_lower_bound(float z) { return z; }
inline float float_lower_bound(double z) {
  float f = float(z);
  if (double(f) > z) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

// z > 0 (z > near >= 0 for every kept face): its bits order as unsigned integers.
inline uint32_t depth_key(float z) {
  uint32_t b;
  std::memcpy(&b, &z, sizeof b);
  return b >> kKeyDropBits;
}

template <typename T>
inline T key_depth(uint32_t key) {
  const uint32_t b = key << kKeyDropBits;
  float z;
  std::memcpy(&z, &b, sizeof z);
  return T(z);
}

// Stable LSD radix sort of (key, payload) by the key's 32 - kKeyDropBits bits, 11 per
// pass, on all threads (each sorts its block's share of every bucket into place, so the
// result does not depend on the thread count); key2 / ord2 are scratch of the same size.
void radix_sort_stable(int64_t n, std::unique_ptr<uint32_t[]>& key, std::unique_ptr<int32_t[]>& ord,
                       std::unique_ptr<uint32_t[]>& key2, std::unique_ptr<int32_t[]>& ord2) {
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  const int64_t nb = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / 65536 + 1));
  const int64_t per = (n + nb - 1) / nb;
  std::vector<int64_t> hist(size_t(nb) * kBuckets);
  for (int shift = 0; shift < 32 - kKeyDropBits; shift += kBits) {
    std::fill(hist.begin(), hist.end(), int64_t(0));
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t* h = hist.data() + b * kBuckets;
        for (int64_t i = b * per, e = std::min(n, (b + 1) * per); i < e; ++i) ++h[(key[i] >> shift) & (kBuckets - 1)];
      }
    });
    int64_t sum = 0;  // bucket-major, block-minor offsets: stable
    bool one_bucket = false;
    for (int d = 0; d < kBuckets; ++d)
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t c = hist[b * kBuckets + d];
        if (c == n) one_bucket = true;
        hist[b * kBuckets + d] = sum;
        sum += c;
      }
    if (one_bucket) continue;  // one digit value: order unchanged
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t* h = hist.data() + b * kBuckets;
        for (int64_t i = b * per, e = std::min(n, (b + 1) * per); i < e; ++i) {
          const int64_t o = h[(key[i] >> shift) & (kBuckets - 1)]++;
          key2[o] = key[i];
          ord2[o] = ord[i];
        }
      }
    });
    key.swap(key2);
    ord.swap(ord2);
  }
}

// One face of a tile's list: its depth lower bound (as the sort key reads) and index.
template <typename T>
struct TileEntry {
  T zl;
  int32_t face;
};

// True when every pixel (x, y) of the tile-local box [x0, x1] x [y0, y1] holds K
// fragments all nearer than zl: offer_face would reject the face there by depth.
template <typename T>
bool behind_all(const Frag<T>* buf, const int* cnt, int K, T zl, int x0, int x1, int y0, int y1) {
  for (int y = y0; y <= y1; ++y)
    for (int x = x0; x <= x1; ++x) {
      const int l = y * kTile + x;
      if (cnt[l] < K || !(zl > buf[size_t(l) * K + K - 1].z)) return false;
    }
  return true;
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
  // 2. per-face setup + culling: tile box and depth lower bound of every face
  const int TX = (W + kTile - 1) / kTile, TY = (H + kTile - 1) / kTile;
  const int64_t NT = int64_t(TX) * TY;
  // chunks of faces, taken dynamically; at most 64 and at most ~4M counters
  const int64_t NC = std::max<int64_t>(
      1, std::min<int64_t>({(F + kFaceChunk - 1) / kFaceChunk, int64_t(64), std::max<int64_t>(1, (int64_t(1) << 22) / NT)}));
  const int64_t per_chunk = (F + NC - 1) / NC;
  std::unique_ptr<int32_t[]> box(new int32_t[4 * F]);  // x0, x1, y0, y1 in tiles; x0 = -1 when culled
  std::unique_ptr<uint32_t[]> fkey(new uint32_t[F]);    // sort key per face (depth_key of its lower bound)
  std::vector<int64_t> binned(NC + 1, 0);               // faces kept per chunk
  // vertex index range per chunk: the index check rides on this pass (no pass of its own)
  std::vector<int64_t> idx_lo(NC, std::numeric_limits<int64_t>::max()), idx_hi(NC, -1);
  dynamic_for(NC, [&](int64_t c) {
    int64_t kept = 0, lo = idx_lo[c], hi = idx_hi[c];
    const int64_t fe = std::min(F, (c + 1) * per_chunk);
    for (int64_t f = c * per_chunk; f < fe; ++f) {
      T fb[4], zmin;
      int x0, x1, y0, y1;
      int32_t* bx = box.get() + 4 * f;
      const int64_t* fv = faces + 3 * f;
      const int64_t vmin = std::min({fv[0], fv[1], fv[2]}), vmax = std::max({fv[0], fv[1], fv[2]});
      lo = std::min(lo, vmin);
      hi = std::max(hi, vmax);
      if (vmin < 0 || vmax >= V) {
        bx[0] = -1;  // never read out of bounds; reported below
        continue;
      }
      if (!cull_face(pv[fv[0]], pv[fv[1]], pv[fv[2]], fb, zmin) ||
          !pixel_box(fb[0], fb[1], fb[2], fb[3], H, W, x0, x1, y0, y1)) {
        bx[0] = -1;
        continue;
      }
      fkey[f] = depth_key(float_lower_bound(depth_lower_bound(zmin)));
      bx[0] = x0 / kTile;
      bx[1] = x1 / kTile;
      bx[2] = y0 / kTile;
      bx[3] = y1 / kTile;
      ++kept;
    }
    binned[c + 1] = kept;
    idx_lo[c] = lo;
    idx_hi[c] = hi;
  });
  if (F > 0) {
    const int64_t lo = *std::min_element(idx_lo.begin(), idx_lo.end());
    const int64_t hi = *std::max_element(idx_hi.begin(), idx_hi.end());
    TORCH_CHECK_VALUE(lo >= 0 && hi < V, "faces index vertices in [", lo, ", ", hi, "] but verts has only ", V,
                      " rows");
  }
  for (int64_t c = 0; c < NC; ++c) binned[c + 1] += binned[c];

  lap("setup");
  // 3. the kept faces sorted by (depth lower bound, face): a stable radix sort of the
  //    float keys of the faces in index order. Binning in this order gives every tile
  //    a list that is already front to back.
  const int64_t NK = binned[NC];
  // (not value-initialised: every element is written before it is read)
  std::unique_ptr<uint32_t[]> key(new uint32_t[NK]), key2(new uint32_t[NK]);
  std::unique_ptr<int32_t[]> ord(new int32_t[NK]), ord2(new int32_t[NK]);
  dynamic_for(NC, [&](int64_t c) {
    int64_t o = binned[c];
    const int64_t fe = std::min(F, (c + 1) * per_chunk);
    for (int64_t f = c * per_chunk; f < fe; ++f) {
      if (box[4 * f] < 0) continue;
      key[o] = fkey[f];
      ord[o++] = int32_t(f);
    }
  });
  radix_sort_stable(NK, key, ord, key2, ord2);

  lap("sort");
  if (prof) std::fprintf(stderr, "  kept=%lld of %lld\n", (long long)NK, (long long)F);
  // 4. tile counts per chunk of the sorted order, exclusive prefix sum in (tile, chunk)
  //    order, then fill the lists: each tile's list is in sorted order
  const int64_t NS = std::max<int64_t>(1, std::min<int64_t>(NC, (NK + kFaceChunk - 1) / kFaceChunk));
  const int64_t per_sorted = (NK + NS - 1) / NS;
  std::vector<int64_t> counts(NS * NT, 0);
  dynamic_for(NS, [&](int64_t c) {
    int64_t* cnt = counts.data() + c * NT;
    const int64_t e = std::min(NK, (c + 1) * per_sorted);
    for (int64_t i = c * per_sorted; i < e; ++i) {
      const int32_t* bx = box.get() + 4 * int64_t(ord[i]);
      for (int ty = bx[2]; ty <= bx[3]; ++ty)
        for (int tx = bx[0]; tx <= bx[1]; ++tx) ++cnt[int64_t(ty) * TX + tx];
    }
  });
  lap("count");
  std::vector<int64_t> tile_begin(NT + 1);
  int64_t total = 0;
  for (int64_t t = 0; t < NT; ++t) {
    tile_begin[t] = total;
    for (int64_t c = 0; c < NS; ++c) {
      int64_t n = counts[c * NT + t];
      counts[c * NT + t] = total;
      total += n;
    }
  }
  tile_begin[NT] = total;
  lap("prefix");
  // entries (depth lower bound, face), front to back within a tile
  std::unique_ptr<TileEntry<T>[]> list(new TileEntry<T>[total]);
  dynamic_for(NS, [&](int64_t c) {
    int64_t* off = counts.data() + c * NT;
    const int64_t e = std::min(NK, (c + 1) * per_sorted);
    for (int64_t i = c * per_sorted; i < e; ++i) {
      const int32_t f = ord[i];
      const int32_t* bx = box.get() + 4 * int64_t(f);
      const TileEntry<T> entry{key_depth<T>(key[i]), f};
      for (int ty = bx[2]; ty <= bx[3]; ++ty)
        for (int tx = bx[0]; tx <= bx[1]; ++tx) list[off[int64_t(ty) * TX + tx]++] = entry;
    }
  });

  lap("fill");
  // 5. rasterize tiles; threads take the next tile from a shared counter (load
  //    balance). Output per pixel depends only on its tile's list: deterministic.
  std::atomic<int64_t> next_tile{0};
  std::atomic<int64_t> c_faces{0}, c_skip{0}, c_out{0}, c_tests{0}, c_zrej{0}, c_cov{0}, c_ins{0};
  const int64_t nthreads = at::get_num_threads();
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    std::vector<Frag<T>> buf(size_t(kTile) * kTile * K);
    std::vector<int> cnt(kTile * kTile);
    int64_t n_faces = 0, n_skip = 0, n_out = 0, n_tests = 0, n_zrej = 0, n_cov = 0, n_ins = 0;  // DNMP_PROFILE counts
    for (;;) {
      int64_t t = next_tile.fetch_add(1);
      if (t >= NT) break;
      const int tx = int(t % TX), ty = int(t / TX);
      const int px0 = tx * kTile, py0 = ty * kTile;
      const int px1 = std::min(W, px0 + kTile) - 1, py1 = std::min(H, py0 + kTile) - 1;
      std::fill(cnt.begin(), cnt.end(), 0);
      // Front to back by depth lower bound (the list's order): lists fill with near
      // fragments first, so farther faces are rejected cheaply, and once a face's bound
      // is behind every pixel's K-th depth, all remaining faces are too. The result does
      // not depend on the order (insertion uses the strict (z, face) order).
      const int npix = (px1 - px0 + 1) * (py1 - py0 + 1);
      int nfull = 0;  // pixels whose list holds K fragments
      T tile_far = std::numeric_limits<T>::infinity();  // max over the tile's pixels of the K-th depth
      bool dirty = false;  // lists changed since tile_far was computed
      const TileEntry<T>* it = list.get() + tile_begin[t];
      const TileEntry<T>* it_end = list.get() + tile_begin[t + 1];
      for (size_t i = 0; it != it_end; ++i, ++it) {
        const T zl = it->zl;
        // the list says which faces come next: fetch their indices, then their vertices
        if (it + 2 * kPrefetch < it_end) __builtin_prefetch(faces + 3 * int64_t(it[2 * kPrefetch].face));
        if (it + kPrefetch < it_end) {
          const int64_t* fv = faces + 3 * int64_t(it[kPrefetch].face);
          __builtin_prefetch(&pv[fv[0]]);
          __builtin_prefetch(&pv[fv[1]]);
          __builtin_prefetch(&pv[fv[2]]);
        }
        const int64_t f = it->face;
        if (dirty && nfull == npix && (i & 7) == 0) {
          dirty = false;
          tile_far = T(0);
          for (int y = py0; y <= py1; ++y)
            for (int x = px0; x <= px1; ++x)
              tile_far = std::max(tile_far, buf[size_t((y - py0) * kTile + (x - px0)) * K + K - 1].z);
        }
        if (zl > tile_far) break;  // this and all later faces are behind every full list
        if (prof) n_faces++;
        const int64_t* fv = faces + 3 * f;
        const ProjVert<T>& p0 = pv[fv[0]];
        const ProjVert<T>& p1 = pv[fv[1]];
        const ProjVert<T>& p2 = pv[fv[2]];
        int x0, x1, y0, y1;  // setup_face's box (same min3 / max3), so the same pixels
        if (!pixel_box(min3(p0.u, p1.u, p2.u), max3(p0.u, p1.u, p2.u), min3(p0.v, p1.v, p2.v),
                       max3(p0.v, p1.v, p2.v), H, W, x0, x1, y0, y1))
          continue;  // never: binned
        x0 = std::max(x0, px0);
        x1 = std::min(x1, px1);
        y0 = std::max(y0, py0);
        y1 = std::min(y1, py1);
        // A face that every pixel of its box in this tile rejects by depth (offer_face's
        // first test) needs no setup: the same outcome, without the edge setup.
        if (nfull > 0 && behind_all(buf.data(), cnt.data(), K, zl, x0 - px0, x1 - px0, y0 - py0, y1 - py0)) {
          if (prof) n_skip++;
          continue;
        }
        FaceSetup<T> fs;
        if (!setup_face(p0, p1, p2, fs)) continue;  // never: binned
        for (int y = y0; y <= y1; ++y) {
          bool entered = false;  // a pixel of this row was inside the face
          for (int x = x0; x <= x1; ++x) {
            const int l = (y - py0) * kTile + (x - px0);
            Frag<T>* lst = buf.data() + size_t(l) * K;
            const bool was_full = cnt[l] == K;
            const Offer r = offer_face(fs, zl, f, T(x), T(y), far, lst, cnt[l], K);
            if (r == kOfferOutside) {
              if (entered) break;  // the row's inside pixels are one run (cover_pixel): it ended
            } else if (r != kOfferDepthRejected) {
              entered = true;
            }
            if (r == kOfferInserted) {
              dirty = true;
              nfull += !was_full && cnt[l] == K;
            }
            if (prof) {
              n_tests++;
              n_zrej += r == kOfferDepthRejected;
              n_cov += r >= kOfferBehind;
              n_out += r == kOfferOutside;
              n_ins += r == kOfferInserted;
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
    if (prof) {
      c_faces += n_faces;
      c_skip += n_skip;
      c_out += n_out;
      c_tests += n_tests;
      c_zrej += n_zrej;
      c_cov += n_cov;
      c_ins += n_ins;
    }
  });
  lap("raster");
  if (prof) std::fprintf(stderr, "  pairs=%lld tiles=%lld faces=%lld skipped=%lld tests=%lld outside=%lld zrej=%lld cov=%lld ins=%lld\n", (long long)total, (long long)NT, (long long)c_faces, (long long)c_skip, (long long)c_tests, (long long)c_out, (long long)c_zrej, (long long)c_cov, (long long)c_ins);
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
  // face indices are checked by rasterize_view's setup pass, before any vertex is read
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
