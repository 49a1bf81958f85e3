"""Custom autograd Functions: a forward, and a backward written by hand, each for a reason
autograd's own would not do.

- `MemorySwish`: x * sigmoid(x) that keeps only x for the backward pass and recomputes the
  sigmoid there. Written as two ops, autograd keeps both x and sigmoid(x): twice the memory per
  activation for one extra sigmoid in backward (`ctx.save_for_backward` vs recompute).
- `RoundSTE`: rounding whose gradient is passed straight through (Bengio et al. 2013), zero
  outside [low, high]: the derivative of round() is 0 almost everywhere, which would stop
  learning through quantization (quantization-aware training, `make compress method=qat`,
  relies on the same estimator inside torch.ao's fake quantization).
- `GradientReversal`: the identity forward, -lambda x the gradient backward (Ganin & Lempitsky
  2015): a feature extractor trained to *confuse* a domain classifier placed after it.

Each has a module wrapper and is checked against finite differences with
`torch.autograd.gradcheck` in float64 (tests/test_functions.py).
"""

import torch
from torch import nn


class MemorySwish(torch.autograd.Function):
    """swish(x) = x * sigmoid(x); d/dx = s * (1 + x * (1 - s)) with s = sigmoid(x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)  # x only: sigmoid(x) is recomputed below
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * s * (1 + x * (1 - s))


class RoundSTE(torch.autograd.Function):
    """round(x) forward; the gradient passed through unchanged where low <= x <= high, zero
    outside (values the rounding would clamp learn nothing from it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.save_for_backward((x >= low) & (x <= high))  # bool mask: 1 byte per element
        return torch.round(x).clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None  # no gradients for the bounds


class GradientReversal(torch.autograd.Function):
    """The identity forward; the gradient times -strength backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength  # a number, not a tensor: no save_for_backward needed
        return x.view_as(x)  # a new tensor object, so autograd records this node

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


class Swish(nn.Module):
    """x * sigmoid(x) with `MemorySwish`'s backward: half the saved activations of the
    two-op version (`nn.SiLU` is a fused kernel that also keeps only x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MemorySwish.apply(x)


class FakeQuantize(nn.Module):
    """x rounded to a grid of `2**bits` steps of `scale`, gradients passed straight through:
    what an int8 weight or activation will look like, seen during training."""

    def __init__(self, scale: float = 0.05, bits: int = 8):
        super().__init__()
        self.scale, self.low, self.high = scale, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RoundSTE.apply(x / self.scale, self.low, self.high) * self.scale


class QuantizedReLU(nn.Module):
    """min(relu(x), max) on a grid of 2**bits levels, the gradient passed straight through
    inside [0, max]: an activation a `bits`-bit integer can hold, learned with."""

    def __init__(self, bits: int = 4, max: float = 4.0):
        super().__init__()
        if bits < 1 or max <= 0:
            raise ValueError(f"QuantizedReLU needs bits >= 1 and max > 0, got {bits} and {max}")
        self.levels, self.scale = 2**bits - 1, max / (2**bits - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RoundSTE.apply(x / self.scale, 0, self.levels) * self.scale


class ReverseGradient(nn.Module):
    def __init__(self, strength: float = 1.0):
        super().__init__()
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GradientReversal.apply(x, self.strength)
