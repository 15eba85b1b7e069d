// CUDA interpolation of vertex attributes at fragments, and its backward.
// Per-fragment math from csrc/common/interp_math.h (shared with the CPU kernel).
// The attribute gradient is a deterministic segmented sum (stable sort of the
// (fragment, vertex slot) rows by vertex id, then a sequential sum per vertex
// and channel in fragment order, from zero): bit-identical across runs, no
// atomics, and the same additions in the same order as the CPU kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/interp_math.h"
#include "cuda/segment_reduce.cuh"
#include "ops.h"

namespace dnmp {
namespace {

constexpr int kThreads = 256;
inline int blocks_for(int64_t n) { return int((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void interp_fwd_kernel(const T* attr, int64_t C, const int64_t* faces, const int64_t* p2f, const T* bary,
                                  int64_t N, T* out) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  interp_fwd_one(attr, C, faces, p2f[n], bary + 3 * n, out + n * C);
}

template <typename T>
__global__ void interp_bwd_bary_kernel(const T* attr, int64_t C, const int64_t* faces, const int64_t* p2f,
                                       const T* g, int64_t N, T* gbary, int64_t* key) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int64_t f = p2f[n];
  for (int i = 0; i < 3; ++i) key[3 * n + i] = f < 0 ? -1 : faces[3 * f + i];
  interp_bwd_bary_one(attr, C, faces, f, g + n * C, gbary + 3 * n);
}

// grad_attr[seg_key[s], c] = sum over rows r (= 3 * fragment + slot) of bary[r] * g[fragment, c]
template <typename T>
__global__ void interp_bwd_attr_kernel(const int64_t* seg_key, const int64_t* seg_start, int64_t nseg,
                                       const int64_t* order, const T* bary, const T* g, int64_t C, T* gattr) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nseg * C) return;
  const int64_t s = i / C, c = i % C;
  const int64_t k = seg_key[s];
  if (k < 0) return;
  T acc = T(0);
  for (int64_t r = seg_start[s]; r < seg_start[s + 1]; ++r) {
    const int64_t row = order[r];
    acc += bary[row] * g[(row / 3) * C + c];
  }
  gattr[k * C + c] = acc;
}

}  // namespace

at::Tensor interpolate_fwd_cuda(const at::Tensor& attributes_, const at::Tensor& faces_,
                                const at::Tensor& pix_to_face_, const at::Tensor& bary_) {
  check_interpolate_args(attributes_, faces_, pix_to_face_, bary_);
  const c10::cuda::CUDAGuard guard(attributes_.device());
  const auto attr = attributes_.contiguous();
  const auto faces = faces_.to(at::kLong).contiguous();
  const auto p2f = pix_to_face_.to(at::kLong).contiguous();
  const auto bary = bary_.to(attr.scalar_type()).contiguous();
  check_face_indices(faces, attr.size(0), "attributes");
  check_pix_to_face(p2f, faces.size(0));
  const int64_t C = attr.size(1), N = p2f.numel();
  auto shape = p2f.sizes().vec();
  shape.push_back(C);
  auto out = at::empty(shape, attr.options());
  if (N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(attr.scalar_type(), "interpolate_fwd_cuda", [&] {
    interp_fwd_kernel<scalar_t><<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        attr.data_ptr<scalar_t>(), C, faces.data_ptr<int64_t>(), p2f.data_ptr<int64_t>(), bary.data_ptr<scalar_t>(),
        N, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> interpolate_bwd_cuda(const at::Tensor& attributes_, const at::Tensor& faces_,
                                                        const at::Tensor& pix_to_face_, const at::Tensor& bary_,
                                                        const at::Tensor& grad_out_, bool bary_grad) {
  check_interpolate_args(attributes_, faces_, pix_to_face_, bary_);
  check_interpolate_grad(attributes_, pix_to_face_, grad_out_);
  const c10::cuda::CUDAGuard guard(attributes_.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto attr = attributes_.contiguous();
  const auto faces = faces_.to(at::kLong).contiguous();
  const auto p2f = pix_to_face_.to(at::kLong).contiguous();
  const auto bary = bary_.to(attr.scalar_type()).contiguous();
  const auto g = grad_out_.to(attr.scalar_type()).contiguous();
  check_face_indices(faces, attr.size(0), "attributes");
  check_pix_to_face(p2f, faces.size(0));
  const int64_t C = attr.size(1), N = p2f.numel();
  auto grad_attr = at::zeros_like(attr);
  auto grad_bary = at::empty(bary.sizes(), attr.options());
  if (N == 0) return {grad_attr, grad_bary};
  auto key = at::empty({3 * N}, p2f.options());
  AT_DISPATCH_FLOATING_TYPES(attr.scalar_type(), "interpolate_bwd_cuda", [&] {
    using T = scalar_t;
    interp_bwd_bary_kernel<T><<<blocks_for(N), kThreads, 0, stream>>>(
        attr.data_ptr<T>(), C, faces.data_ptr<int64_t>(), p2f.data_ptr<int64_t>(), g.data_ptr<T>(), N,
        grad_bary.data_ptr<T>(), key.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const Segments sg = make_segments(key);
    const int64_t n = sg.nseg * C;
    if (n > 0) {
      interp_bwd_attr_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
          sg.seg_key.data_ptr<int64_t>(), sg.seg_start.data_ptr<int64_t>(), sg.nseg, sg.order.data_ptr<int64_t>(),
          bary.data_ptr<T>(), g.data_ptr<T>(), C, grad_attr.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  // the bary kernel also writes the keys the attribute pass needs: it always runs here
  if (!bary_grad) grad_bary.zero_();
  return {grad_attr, grad_bary};
}

}  // namespace dnmp
