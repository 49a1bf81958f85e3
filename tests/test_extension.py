"""The C++ extension `templates_ext::swish`: values, gradients against finite differences,
torch.library's opcheck, one node under torch.compile, training parity with nn.SiLU, CUDA
against CPU, and a failed build told in one line."""

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from common.errors import UserError
from common.extension import CppSwish, compile_extension, load, swish
from tests.conftest import compile_whole

# The first build compiles for ~15 s (then cached in data/extensions/): not in `make test`.
pytestmark = pytest.mark.slow


def inputs(*shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()


@pytest.fixture(scope="module", autouse=True)
def built():
    load()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_op_is_x_times_sigmoid_x_on_any_layout(dtype):
    x = inputs(6, 40_000, dtype=dtype).detach() * 5  # 240k elements: several parallel tasks
    torch.testing.assert_close(swish(x), x * torch.sigmoid(x))
    xt = x.t()  # (40000, 6), not contiguous: the output keeps its strides
    torch.testing.assert_close(swish(xt), xt * torch.sigmoid(xt))
    assert swish(xt).stride() == xt.stride()
    sliced = x[:, ::3]  # not dense: computed on a contiguous copy
    torch.testing.assert_close(swish(sliced), sliced * torch.sigmoid(sliced))
    images = x[:, :240].reshape(6, 4, 6, 10).to(memory_format=torch.channels_last)
    assert swish(images).is_contiguous(memory_format=torch.channels_last)  # no layout copies
    torch.testing.assert_close(swish(images), images * torch.sigmoid(images))
    half = x.bfloat16()  # computed in float inside, rounded once, as nn.SiLU does
    torch.testing.assert_close(swish(half), nn.functional.silu(half))
    extremes = torch.tensor([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=dtype)
    assert swish(extremes).tolist() == [-0.0, pytest.approx(-50 * torch.e**-50), 0.0, 50.0, 1000.0]


def test_gradients_match_finite_differences_and_the_composition():
    x = inputs(4, 7)
    assert gradcheck(swish, (x,), eps=1e-6, atol=1e-5)
    (ours,) = torch.autograd.grad(swish(x).sum(), x)  # sum() hands back an expanded grad
    (theirs,) = torch.autograd.grad((x * torch.sigmoid(x)).sum(), x)
    torch.testing.assert_close(ours, theirs)


def test_only_x_is_saved_for_backward():
    x = inputs(1000)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        swish(x)
    assert len(saved) == 1 and saved[0].data_ptr() == x.data_ptr()


def test_opcheck_passes_for_both_ops():
    x = inputs(3, 5)
    torch.library.opcheck(torch.ops.templates_ext.swish.default, (x,))
    torch.library.opcheck(torch.ops.templates_ext.swish.default, (x.detach().t(),))
    channels_last = inputs(2, 3, 4, 5).detach().to(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.templates_ext.swish.default, (channels_last.requires_grad_(),))
    grad = torch.randn(3, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.templates_ext.swish_backward.default, (grad, x.detach()))


def test_bad_inputs_are_one_readable_error():
    with pytest.raises(RuntimeError, match="must be a floating-point tensor, got Long"):
        swish(torch.arange(3))
    with pytest.raises(RuntimeError, match=r"grad has shape \[2\] but x has shape \[3\]"):
        torch.ops.templates_ext.swish_backward(torch.ones(2), torch.ones(3))


def test_compiles_fullgraph_with_the_op_as_one_node():
    y = torch.randn(5)
    out, graph = compile_whole(lambda t: swish(t) * 2, y)
    torch.testing.assert_close(out, 2 * y * torch.sigmoid(y))
    calls = [n for n in graph.graph.nodes if "templates_ext.swish" in str(n.target)]
    assert len(calls) == 1 and "sigmoid" not in graph.code  # the op itself, not decomposed


def test_a_net_with_cpp_swish_trains_like_one_with_silu():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=gen)
    y = x[:, :1] * x[:, 1:2]  # learnable, not linear

    def train(activation):
        """Losses over 40 Adam steps, and the first step's gradients."""
        torch.manual_seed(0)  # the same initial weights for both nets
        net = nn.Sequential(nn.Linear(8, 32), activation, nn.Linear(32, 1))
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        losses, grads = [], None
        for _ in range(40):
            loss = nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            grads = grads or [p.grad.clone() for p in net.parameters()]
            opt.step()
            losses.append(loss.item())
        return losses, grads

    (ours, our_grads), (silu, silu_grads) = train(CppSwish()), train(nn.SiLU())
    assert ours[-1] < 0.5 * ours[0]  # it learns
    assert ours == pytest.approx(silu, rel=1e-4)  # as nn.SiLU does, step for step
    for a, b in zip(our_grads, silu_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_a_build_failure_is_one_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    broken = tmp_path / "broken.cpp"
    broken.write_text("int main() { return 0 }\n")  # a missing ';': fails in well under a second
    with pytest.raises(UserError, match=r"templates_ext_broken failed: .*error: .*ninja -C") as err:
        compile_extension("templates_ext_broken", [broken])
    assert "\n" not in str(err.value)
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(UserError, match="needs a C\\+\\+ compiler, and `no-such-compiler` is not"):
        compile_extension("templates_ext_broken", [broken])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_cuda_kernels_match_the_cpu_ones():
    x = inputs(3, 70_000, dtype=torch.float32).detach() * 5
    grad = torch.randn_like(x)
    xc, gc = x.cuda(), grad.cuda()
    torch.testing.assert_close(swish(xc).cpu(), swish(x))
    backward = torch.ops.templates_ext.swish_backward
    torch.testing.assert_close(backward(gc, xc).cpu(), backward(grad, x))
    torch.testing.assert_close(swish(xc.t()).cpu(), swish(x.t()))
    half = xc.to(torch.bfloat16)
    torch.testing.assert_close(swish(half), (half.float() * torch.sigmoid(half.float())).bfloat16())
    assert gradcheck(swish, (inputs(4, 7).cuda(),), eps=1e-6, atol=1e-5)
    torch.library.opcheck(torch.ops.templates_ext.swish.default, (inputs(3, 5).cuda(),))
