"""Muon (common/optim.py): orthogonalized updates, routing, the fallbacks, learning, checkpoints."""

import copy

import pytest
import torch
from torch import nn

from common.optim import Muon, zeropower_via_newtonschulz5


@pytest.fixture(autouse=True)
def one_thread():
    """These matrices are tiny: with a second busy process on 2 cores, the 2-thread pool waits
    on a descheduled thread in every op, and the learning test takes 8 s instead of 0.1 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spread_matrix(rows: int, cols: int, lo: float, hi: float, seed: int = 0):
    """(U, s, V) and G = U diag(s) V^T (rows, cols), s log-spaced from 10**hi down to 10**lo."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen))  # (rows, k), orthonormal columns
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen))  # (cols, k)
    s = torch.logspace(hi, lo, k)
    return u, s, v, u @ torch.diag(s) @ v.T


def one_step_update(shape, grad, **kwargs) -> torch.Tensor:
    """The update -(p_1 - p_0) of one Muon step with lr=1 from p_0 = 0, flattened to (rows, -1)."""
    p = nn.Parameter(torch.zeros(shape))
    p.grad = grad.reshape(shape).clone()
    Muon([p], lr=1.0, momentum=0.0, weight_decay=0.0, **kwargs).step()
    return -p.detach().reshape(shape[0], -1)


# ns_steps=5 lifts singular values down to ~1e-3 of the gradient's Frobenius norm (each step
# multiplies a small one by ~3.4); a spread of 5 orders of magnitude takes 10 steps in float32.
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (16, 8, 3, 3)])
@pytest.mark.parametrize(("lo", "ns_steps"), [(0.0, 5), (-3.0, 10)])
def test_update_is_orthogonalized_gradient(shape, lo, ns_steps):
    rows, cols = shape[0], torch.Size(shape[1:]).numel()
    u, s, v, g = spread_matrix(rows, cols, lo=lo, hi=2.0)
    assert s.max() / s.min() >= 10 ** (2.0 - lo) * 0.99

    update = one_step_update(shape, g, ns_steps=ns_steps)  # (rows, cols)
    sv = torch.linalg.svdvals(update) / max(1.0, rows / cols) ** 0.5
    assert sv.min() >= 0.6 and sv.max() <= 1.25, (sv.min().item(), sv.max().item())

    # Same singular vectors as the gradient: U^T update V is diagonal, with positive diagonal
    # (so -update descends: <update, g> = sum_i s_i sigma_i > 0).
    core = u.T @ update @ v  # (k, k)
    off_diagonal = core - torch.diag(core.diagonal())
    assert off_diagonal.norm() < 1e-3 * core.norm()
    assert (core.diagonal() > 0).all()
    assert torch.trace(update.T @ g) > 0


def test_zeropower_batched_and_dtype():
    _, _, _, g = spread_matrix(48, 24, lo=0.0, hi=2.0)
    batch = torch.stack([g, 2 * g, g.flip(0)]).double()  # (3, 48, 24)
    out = zeropower_via_newtonschulz5(batch)
    assert out.shape == batch.shape and out.dtype == torch.float64
    torch.testing.assert_close(out[0], out[1])  # scale-free: normalized by the Frobenius norm
    torch.testing.assert_close(out[0], zeropower_via_newtonschulz5(g).double(), atol=1e-5, rtol=0)
    assert zeropower_via_newtonschulz5(g, dtype=torch.bfloat16).dtype == torch.float32


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)


def muon_params(opt: Muon) -> set:
    return {p for group in opt.param_groups if group["use_muon"] for p in group["params"]}


def test_routing():
    net = Net()
    opt = Muon(net.named_parameters())
    assert muon_params(opt) == {net.body[0].weight}
    assert all(group["use_muon"] or group["lr"] == 3e-4 for group in opt.param_groups)
    named = [n for group in opt.param_groups if group["use_muon"] for n in group["param_names"]]
    assert named == ["body.0.weight"]

    # Without names, every matrix is Muon's: the head too.
    assert muon_params(Muon(net.parameters())) == {net.body[0].weight, net.head.weight}

    # Group dicts: `use_muon` is obeyed, other groups split, `lr` given is kept.
    opt = Muon(
        [
            {"params": net.body.parameters(), "lr": 0.1},
            {"params": net.head.parameters(), "use_muon": False},
        ]
    )
    assert muon_params(opt) == {net.body[0].weight}
    assert [(g["use_muon"], g["lr"]) for g in opt.param_groups] == [
        (True, 0.1),
        (False, 0.1),
        (False, 3e-4),
    ]

    with pytest.raises(ValueError, match="use_muon=True needs matrices"):
        Muon([{"params": [net.head.bias], "use_muon": True}])


@pytest.mark.parametrize("fallback", ["adamw", "sgd"])
def test_fallback_matches_torch(fallback):
    torch.manual_seed(0)
    p0 = torch.randn(10)
    grads = [torch.randn(10) for _ in range(3)]
    a, b = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())
    kw = dict(lr=0.05, weight_decay=0.1)
    if fallback == "adamw":
        ours = Muon(
            [a],
            fallback="adamw",
            fallback_lr=0.05,
            fallback_betas=(0.8, 0.9),
            fallback_eps=1e-6,
            fallback_weight_decay=0.1,
        )
        ref = torch.optim.AdamW([b], betas=(0.8, 0.9), eps=1e-6, **kw)
    else:
        ours = Muon(
            [a], fallback="sgd", fallback_lr=0.05, fallback_momentum=0.9, fallback_weight_decay=0.1
        )
        ref = torch.optim.SGD([b], momentum=0.9, nesterov=True, **kw)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    assert not torch.equal(a, p0)


def test_bad_fallback():
    with pytest.raises(ValueError, match=r"fallback must be one of \('adamw', 'sgd'\), got 'adam'"):
        Muon(Net().parameters(), fallback="adam")


def test_learns_regression():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = torch.sin(x @ torch.randn(8, 1)) + 0.5 * x[:, :1] ** 2  # (256, 1)
    net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))  # names "0.", "2."
    opt = Muon(net.named_parameters(), lr=0.05, fallback_lr=1e-2)
    assert len(muon_params(opt)) == 2  # both matrices: no `exclude` word in "0.weight", "2.weight"

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        return loss

    start = closure().item()
    for _ in range(100):
        loss = opt.step(closure)
    assert loss.item() < 0.05 * start, (start, loss.item())  # measured: ~1.2%


def test_state_dict_round_trip_and_scheduler():
    torch.manual_seed(0)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    net = Net()
    opt = Muon(net.named_parameters(), lr=0.02, fallback_lr=1e-3)

    def step(net, opt):
        opt.zero_grad()
        nn.functional.mse_loss(net.head(net.body(x)), y).backward()
        opt.step()

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5**i)
    for _ in range(3):
        step(net, opt)
        sched.step()
    # Scaling every group's lr keeps the ratio Muon / fallback.
    assert [g["lr"] for g in opt.param_groups] == [0.02 / 8, 1e-3 / 8]

    twin = copy.deepcopy(net)
    twin_opt = Muon(twin.named_parameters())  # other hyperparameters: the state dict restores them
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert twin_opt.param_groups[0]["param_names"] == ["body.0.weight"]
    assert copy.deepcopy(twin_opt).exclude == twin_opt.exclude  # kept by __getstate__
    step(net, opt)
    step(twin, twin_opt)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)

    # OneCycleLR: per-group max_lr keeps the ratio; cycle_momentum cycles Muon's momentum.
    opt = Muon(Net().named_parameters(), lr=0.02, fallback_lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=10
    )
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] / lrs[1] == pytest.approx(20)
    assert opt.param_groups[0]["momentum"] == 0.95 and opt.param_groups[1]["betas"] == (0.9, 0.95)
