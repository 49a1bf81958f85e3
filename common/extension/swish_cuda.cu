// The CUDA kernels of templates_ext::swish and swish_backward (schema: swish.cpp). Compiled
// only where torch sees a GPU. One thread per element (a grid-stride loop covers any size):
// each reads its x (and grad) once and writes one value, the whole op one pass over memory.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void swish_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                             int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;  // float for half/bfloat16
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const opmath_t v = x[i];
    y[i] = v / (opmath_t(1) + exp(-v));  // x * sigmoid(x)
  }
}

template <typename scalar_t>
__global__ void swish_backward_kernel(const scalar_t* __restrict__ grad,
                                      const scalar_t* __restrict__ x, scalar_t* __restrict__ dx,
                                      int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    const opmath_t v = x[i];
    const opmath_t s = opmath_t(1) / (opmath_t(1) + exp(-v));  // recomputed, not saved
    dx[i] = opmath_t(grad[i]) * s * (opmath_t(1) + v * (opmath_t(1) - s));
  }
}

// Enough blocks to fill the GPU; the grid-stride loop takes the rest.
int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 16));
}

// `t` with `ref`'s strides, copied only if they differ (a transposed or expanded input): the
// kernels then run one flat loop over the memory of same-shaped, same-strided tensors.
at::Tensor like(const at::Tensor& t, const at::Tensor& ref) {
  return t.strides() == ref.strides() ? t : at::empty_like(ref).copy_(t);
}

at::Tensor swish_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_floating_point(), "templates_ext::swish: x must be a floating-point tensor, got ",
              x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());  // launch on x's GPU, not the current one
  at::Tensor y = at::empty_like(x);  // x's layout if dense, as the fake
  const at::Tensor xc = like(x, y);
  const int64_t n = xc.numel();
  if (n == 0) return y;  // a grid of 0 blocks is a launch error
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swish_cuda", [&] {
    swish_kernel<scalar_t><<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor swish_backward_cuda(const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK(grad.sizes() == x.sizes(), "templates_ext::swish_backward: grad has shape ",
              grad.sizes(), " but x has shape ", x.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && x.is_floating_point(),
              "templates_ext::swish_backward: grad and x must share a floating-point dtype, got ",
              grad.scalar_type(), " and ", x.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), "templates_ext::swish_backward: grad is on ",
              grad.device(), " but x is on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty_like(x);
  const at::Tensor xc = like(x, dx);
  const at::Tensor gc = like(grad, dx);
  const int64_t n = xc.numel();
  if (n == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swish_backward_cuda",
                                  [&] {
    swish_backward_kernel<scalar_t>
        <<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
            dx.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(templates_ext, CUDA, m) {
  m.impl("swish", &swish_cuda);
  m.impl("swish_backward", &swish_backward_cuda);
}
