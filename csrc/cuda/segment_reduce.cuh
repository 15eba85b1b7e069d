// Deterministic scatter-add for the CUDA backward passes: rows are grouped by
// key with a stable sort and each group is summed sequentially in the original
// row order, so the result never depends on scheduling (no atomics).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

namespace dnmp {

template <typename T>
__global__ void segment_sum_kernel(const int64_t* seg_key, const int64_t* seg_start, int64_t nseg,
                                   const int64_t* order, const T* rows, int64_t C, T* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nseg * C) return;
  const int64_t s = i / C, c = i % C;
  const int64_t k = seg_key[s];
  if (k < 0) return;
  T acc = T(0);
  for (int64_t r = seg_start[s]; r < seg_start[s + 1]; ++r) acc += rows[order[r] * C + c];
  out[k * C + c] = acc;
}

// Rows grouped by key: order (row ids sorted stably by key), and per segment its
// key and start offset into order (seg_start has nseg + 1 entries).
struct Segments {
  at::Tensor seg_key, seg_start, order;
  int64_t nseg = 0;
};

inline Segments make_segments(const at::Tensor& key) {
  Segments s;
  auto sorted = at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  s.order = std::get<1>(sorted).contiguous();
  auto uc = at::unique_consecutive(std::get<0>(sorted), /*return_inverse=*/false, /*return_counts=*/true);
  s.seg_key = std::get<0>(uc).contiguous();
  const auto counts = std::get<2>(uc);
  s.seg_start = at::zeros({counts.numel() + 1}, counts.options());
  s.seg_start.narrow(0, 1, counts.numel()).copy_(at::cumsum(counts, 0));
  s.nseg = s.seg_key.numel();
  return s;
}

// out[key[r], :] = sum of rows[r, :] over r with that key (key < 0: ignored).
inline at::Tensor segment_sum_by_key(const at::Tensor& key, const at::Tensor& rows, int64_t nkeys) {
  const int64_t C = rows.size(1);
  auto out = at::zeros({nkeys, C}, rows.options());
  if (key.numel() == 0 || nkeys == 0) return out;
  const Segments sg = make_segments(key);
  const auto rc = rows.contiguous();
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "segment_sum_by_key", [&] {
    const int64_t n = sg.nseg * C;
    if (n == 0) return;
    segment_sum_kernel<scalar_t><<<int((n + 255) / 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        sg.seg_key.data_ptr<int64_t>(), sg.seg_start.data_ptr<int64_t>(), sg.nseg, sg.order.data_ptr<int64_t>(),
        rc.data_ptr<scalar_t>(), C, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace dnmp
