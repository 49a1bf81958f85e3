"""The custom autograd Functions: hand-written backwards against finite differences (float64)
and against autograd's own, and what each exists for."""

import torch
from torch.autograd import gradcheck

from common.functions import (
    FakeQuantize,
    GradientReversal,
    MemorySwish,
    ReverseGradient,
    RoundSTE,
    Swish,
)
from tests.conftest import compile_whole


def inputs(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)


def test_memory_swish_backward_matches_finite_differences_and_autograd():
    x = inputs(4, 7)
    assert gradcheck(MemorySwish.apply, (x,), eps=1e-6, atol=1e-5)
    (ours,) = torch.autograd.grad(Swish()(x).sum(), x)
    (theirs,) = torch.autograd.grad((x * torch.sigmoid(x)).sum(), x)
    assert torch.allclose(ours, theirs)


def test_memory_swish_keeps_one_tensor_where_two_ops_keep_two():
    x = inputs(1000)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        (x * torch.sigmoid(x)).sum()
    composed = sum(t.numel() for t in saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        MemorySwish.apply(x).sum()
    # Two ops keep x and sigmoid(x) (the product and the sigmoid each save the latter: one
    # storage, two references); ours keeps x alone.
    assert sum(t.numel() for t in saved) == 1000 and composed >= 2000


def test_round_ste_passes_gradients_through_inside_its_range_only():
    x = torch.tensor([-3.0, -0.6, 0.2, 1.4, 3.0], dtype=torch.float64, requires_grad=True)
    y = RoundSTE.apply(x, -2.0, 2.0)
    assert y.tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def surrogate(function, value):
    """`value(t)`'s values with `function`'s gradients: gradcheck then compares a hand-written
    backward that is not its own forward's derivative (by design) with the finite differences
    of the function it stands in for."""
    return lambda t: function(t) + (value(t) - function(t)).detach()


def test_round_ste_backward_is_the_derivative_of_clamping():
    x = inputs(6) * 0.5  # inside [-2, 2], away from the edges
    assert gradcheck(surrogate(lambda t: RoundSTE.apply(t, -2.0, 2.0), lambda t: t), (x,))
    wrong = surrogate(lambda t: RoundSTE.apply(t, -2.0, 2.0), lambda t: 2 * t)
    assert not gradcheck(wrong, (x,), raise_exception=False)  # the check can fail


def test_fake_quantize_rounds_to_its_grid_and_still_learns():
    fq = FakeQuantize(scale=0.5, bits=4)
    x = torch.tensor([0.2, 0.3, 0.74, 10.0], requires_grad=True)
    y = fq(x)
    assert y.tolist() == [0.0, 0.5, 0.5, 3.5]  # 3.5 = 7 steps, the 4-bit maximum
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_gradient_reversal_is_the_identity_forward_and_negates_gradients():
    x = inputs(3, 5)
    layer = ReverseGradient(strength=0.3)
    assert torch.equal(layer(x), x)
    (grad,) = torch.autograd.grad((layer(x) * 2).sum(), x)
    assert torch.allclose(grad, torch.full_like(x, -0.6))
    assert gradcheck(surrogate(lambda t: GradientReversal.apply(t, 0.3), lambda t: -0.3 * t), (x,))


def test_the_custom_op_passes_opcheck_and_compiles_whole():
    from common.ops import swish

    x = inputs(3, 4)
    torch.library.opcheck(swish, (x,))  # schema, fake tensor, autograd registration, dispatch
    assert gradcheck(swish, (x,))
    assert torch.allclose(swish(x), x * torch.sigmoid(x))
    y = torch.randn(5)
    out, graph = compile_whole(lambda t: swish(t) * 2, y)  # one graph, no break
    assert torch.allclose(out, 2 * y * torch.sigmoid(y))
    assert "templates.swish" in graph.code or "templates::swish" in str(graph.graph)
