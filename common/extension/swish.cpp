// templates_ext::swish: x * sigmoid(x) in one pass over memory, and its backward.
//
// The schema is declared here (TORCH_LIBRARY) and the CPU kernels registered under it
// (TORCH_LIBRARY_IMPL); swish_cuda.cu registers the CUDA ones under the same names. The fake
// (shape-only) implementations and the autograd formula are registered in Python
// (common/extension/__init__.py).
//
// Lean headers rather than <torch/extension.h>: no pybind11 (this is a library of torch ops,
// not a Python module), and a shorter compile.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

namespace {

// Elements per parallel task: under ~32k, waking a thread costs more than the work it gets.
constexpr int64_t kGrain = 32768;

void check_input(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_floating_point(), "templates_ext::swish: ", what,
              " must be a floating-point tensor, got ", t.scalar_type());
}

void check_pair(const at::Tensor& grad, const at::Tensor& x) {
  check_input(grad, "grad");
  check_input(x, "x");
  TORCH_CHECK(grad.sizes() == x.sizes(), "templates_ext::swish_backward: grad has shape ",
              grad.sizes(), " but x has shape ", x.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "templates_ext::swish_backward: grad is ",
              grad.scalar_type(), " but x is ", x.scalar_type());
  TORCH_CHECK(grad.device() == x.device(), "templates_ext::swish_backward: grad is on ",
              grad.device(), " but x is on ", x.device());
}

// The element-wise formulas, on `Vectorized` SIMD registers (8 floats with AVX2, 16 with
// AVX-512: ATen's own CPU kernels, SiLU's among them, are written the same way). A scalar
// std::exp loop is ~10x slower: compilers do not vectorize a libm call.
// y = x * s with s = sigmoid(x) = 1 / (1 + exp(-x)), written x / (1 + exp(-x)): one division,
// and at x -> -inf, -inf / inf would be nan where x / (1 + inf) is -0.
template <typename V>
V swish_formula(V x) {
  return x / (V(1) + x.neg().exp());
}

// d/dx [x * s] = s + x * s * (1 - s) = s * (1 + x * (1 - s)). s is recomputed from x (a few
// flops) instead of saved by the forward: autograd keeps x alone, half the memory.
template <typename V>
V swish_backward_formula(V grad, V x) {
  const V s = V(1) / (V(1) + x.neg().exp());
  return grad * s * (V(1) + x * (V(1) - s));
}

// `t` with `ref`'s strides, copied only if they differ (a transposed or expanded input): the
// kernels then run one flat loop over the memory of same-shaped, same-strided tensors.
at::Tensor like(const at::Tensor& t, const at::Tensor& ref) {
  return t.strides() == ref.strides() ? t : at::empty_like(ref).copy_(t);
}

at::Tensor swish_cpu(const at::Tensor& x) {
  check_input(x, "x");
  at::Tensor y = at::empty_like(x);  // x's layout if dense (channels_last stays so), as the fake
  const at::Tensor xc = like(x, y);  // then one flat loop over memory: the same strides
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swish_cpu", [&] {
    const scalar_t* in = xc.const_data_ptr<scalar_t>();
    scalar_t* out = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, xc.numel(), kGrain, [&](int64_t begin, int64_t end) {
      // map: Vectorized-wide steps, then the tail; half and bfloat16 are computed in float.
      at::vec::map([](auto v) { return swish_formula(v); }, out + begin, in + begin,
                   end - begin);
    });
  });
  return y;
}

at::Tensor swish_backward_cpu(const at::Tensor& grad, const at::Tensor& x) {
  check_pair(grad, x);
  at::Tensor dx = at::empty_like(x);
  const at::Tensor xc = like(x, dx);
  const at::Tensor gc = like(grad, dx);  // sum()'s backward, e.g., hands an expanded grad
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swish_backward_cpu",
                                  [&] {
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    const scalar_t* in = xc.const_data_ptr<scalar_t>();
    scalar_t* out = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, xc.numel(), kGrain, [&](int64_t begin, int64_t end) {
      at::vec::map2([](auto g, auto v) { return swish_backward_formula(g, v); }, out + begin,
                    g + begin, in + begin, end - begin);
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY(templates_ext, m) {
  m.def("swish(Tensor x) -> Tensor");
  m.def("swish_backward(Tensor grad, Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(templates_ext, CPU, m) {
  m.impl("swish", &swish_cpu);
  m.impl("swish_backward", &swish_backward_cpu);
}
