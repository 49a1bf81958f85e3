"""A custom operator registered with torch.library: `templates::swish`, the fused x * sigmoid(x)
as one op that torch.compile, torch.export and the dispatcher all know.

Why an op and not a Function: torch.compile and torch.export trace an `autograd.Function`'s
Python body op by op (and break the graph where they cannot); a `torch.library.custom_op` has a
schema, a fake (meta) implementation that tells compilers the output's shape and dtype without
running it, and an autograd formula registered beside it, so graphs capture it whole and
`torch.library.opcheck` can test all of that. The kernel here is plain torch; a C++ or CUDA
kernel is registered the same way (common/extension/: the schema and kernels with TORCH_LIBRARY
in C++, the fake and autograd parts in Python).
"""

import torch
from torch import nn


@torch.library.custom_op("templates::swish", mutates_args=())
def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), one kernel call."""
    return x * torch.sigmoid(x)


@swish.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)  # same shape, dtype and device: all a compiler needs


def _setup_context(ctx, inputs, output) -> None:
    (x,) = inputs
    ctx.save_for_backward(x)  # x only: the sigmoid is recomputed in backward


def _backward(ctx, grad: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    s = torch.sigmoid(x)
    return grad * s * (1 + x * (1 - s))


swish.register_autograd(_backward, setup_context=_setup_context)


class OpSwish(nn.Module):
    """`templates::swish` as an activation layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swish(x)
