"""Muon: MomentUm Orthogonalized by Newton-Schulz, with AdamW or SGD for the other parameters.

SGD and Adam move a weight matrix mostly along the few directions its gradient is large in: a
gradient's singular values typically span orders of magnitude, so the rare directions barely
learn. Muon replaces each matrix's momentum-smoothed update by the nearest semi-orthogonal
matrix (U V^T from its SVD U S V^T), so every direction moves at the same rate. It set the
records in Keller Jordan's 2024 NanoGPT and CIFAR-10 (airbench) speedruns; the published
reference: https://kellerjordan.github.io/posts/muon/

Muon is for the hidden weight matrices only. Biases, norms, embeddings and the classifier head
(anything 1-D, or with an `exclude` word as a component of its dotted name) go to a fallback,
AdamW or SGD, in groups of their own, so one optimizer object serves the whole model:

    opt = Muon(model.named_parameters(), lr=0.02, fallback_lr=3e-4)

Schedulers scale `lr` per group: LambdaLR (`common.module.warmup_cosine`), cosine, step decay
keep the Muon/fallback ratio. OneCycleLR with a scalar `max_lr` does not (it gives every group
the same lr): pass `max_lr=[g["lr"] * k for g in opt.param_groups]`. Its cycle_momentum=True
works: it cycles `momentum` (Muon's, and SGD's), AdamW groups keep their `betas`.
"""

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

FALLBACKS = ("adamw", "sgd")

# Parameter-name components (between dots) that mark the input and output layers, which Muon
# leaves to the fallback: heads and classifiers, embeddings and patch stems (ours, timm's and
# torchvision's names: `head`, `heads.head`, `fc`, `pos_embedding`, `class_token`, `conv_proj`).
EXCLUDE = (
    "head", "heads", "fc", "classifier", "embed", "embedding", "pos_embed", "pos_embedding",
    "cls_token", "class_token", "patch_embed", "conv_proj",
)  # fmt: skip


def zeropower_via_newtonschulz5(
    g: Tensor, steps: int = 5, dtype: torch.dtype | None = None
) -> Tensor:
    """About U V^T for g = U S V^T, g (..., rows, cols), by a quintic Newton-Schulz iteration.

    The coefficients maximize the slope at zero (3.4445) rather than converge to exactly 1: the
    outputs' singular values land in about [0.7, 1.2], which trains as well as an exact U V^T.
    Each step multiplies a small singular value by ~3.4, so 5 steps lift those above ~1e-3 of
    the Frobenius norm. dtype: bfloat16 off-CPU (fast, and precise enough), float32 on CPU.
    """
    assert g.ndim >= 2, f"need a matrix, got shape {tuple(g.shape)}"
    a, b, c = 3.4445, -4.7750, 2.0315
    dtype = dtype or (torch.float32 if g.device.type == "cpu" else torch.bfloat16)
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:  # (rows, cols) -> (cols, rows): the Gram matrix x x^T is then the small one
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # all singular values now <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (r, r), r = min(rows, cols)
        x = a * x + (b * gram + c * gram @ gram) @ x  # sigma -> a sigma + b sigma^3 + c sigma^5
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for weight matrices, `fallback` ("adamw" or "sgd") for the rest, in separate groups.

    params: tensors, (name, tensor) pairs (`model.named_parameters()`: names enable `exclude`),
    or group dicts. A group that does not set `use_muon` is split: matrices (ndim >= 2, conv
    kernels flattened to (out, in * kh * kw)) whose dotted name has no `exclude` component use Muon,
    the rest the fallback, with `fallback_lr`, `fallback_weight_decay`, ... unless the group
    sets `lr`, `weight_decay`, `betas`, `eps`, `momentum` itself. Muon's weight decay and AdamW's
    are decoupled; SGD's is torch.optim.SGD's (added to the gradient). `nesterov` applies to both
    Muon and SGD. Under DDP the gradients are already all-reduced when `step` runs, so every
    process computes the same orthogonalized update: no extra communication.
    """

    takes_named_params = True  # TemplateModule.configure_optimizers passes named_parameters()

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        fallback: str = "adamw",
        fallback_lr: float = 3e-4,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        fallback_momentum: float = 0.9,
        fallback_weight_decay: float = 0.0,
        exclude: Iterable[str] = EXCLUDE,
    ):
        self.exclude = tuple(exclude)
        self.fallback_defaults = dict(
            lr=fallback_lr, weight_decay=fallback_weight_decay, betas=tuple(fallback_betas),
            eps=fallback_eps, momentum=fallback_momentum,
        )  # fmt: skip
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
            weight_decay=weight_decay, fallback=fallback,
        )  # fmt: skip
        super().__init__(params, defaults)  # calls add_param_group below for each group

    def __getstate__(self):  # torch's keeps only defaults, state and groups: for deepcopy, pickle
        return {
            **super().__getstate__(),
            **{k: self.__dict__[k] for k in ("exclude", "fallback_defaults")},
        }

    def add_param_group(self, param_group: dict) -> None:
        """Add a group, split into a Muon part and a fallback part unless it sets `use_muon`."""
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        fallback = param_group.get("fallback", self.defaults["fallback"])
        if fallback not in FALLBACKS:
            raise ValueError(f"Muon: fallback must be one of {FALLBACKS}, got {fallback!r}")
        parts = {True: [], False: []}
        for p in params:  # p: a tensor or a (name, tensor) pair
            name, t = p if isinstance(p, tuple) else ("", p)
            excluded = any(part in self.exclude for part in name.split("."))
            use_muon = param_group.get("use_muon", not excluded)
            if use_muon and t.ndim < 2 and "use_muon" in param_group:
                raise ValueError(f"Muon: use_muon=True needs matrices, got shape {tuple(t.shape)}")
            parts[bool(use_muon and t.ndim >= 2)].append(p)
        for use_muon, part in parts.items():
            if part:
                group = {**param_group, "params": part, "use_muon": use_muon}
                if not use_muon:  # AdamW ignores `momentum`, SGD `betas` and `eps`
                    group = {**self.fallback_defaults, **group}
                super().add_param_group(group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon(group, params)
            elif group["fallback"] == "adamw":
                self._adamw(group, params)
            else:
                self._sgd(group, params)
        return loss

    def _momentum(self, p: Tensor, g: Tensor, group: dict) -> Tensor:
        """buf = momentum * buf + g; returns the Nesterov look-ahead g + momentum * buf, or buf."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"].mul_(group["momentum"]).add_(g)
        return g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf

    def _muon(self, group: dict, params: list[Tensor]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        for p in params:
            u = self._momentum(p, p.grad, group)
            u = u.reshape(len(p), -1)  # (out, in * kh * kw) for convs
            u = zeropower_via_newtonschulz5(u, group["ns_steps"])  # singular values ~1
            # Its entries' RMS is 1 / sqrt(max(rows, cols)): scaling tall matrices makes it
            # 1 / sqrt(cols) = 1 / sqrt(fan_in) for every shape.
            u = u * max(1.0, u.size(0) / u.size(1)) ** 0.5
            p.mul_(1 - lr * wd)
            p.add_(u.reshape_as(p), alpha=-lr)

    def _adamw(self, group: dict, params: list[Tensor]) -> None:
        """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments)."""
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in params:
            g, state = p.grad, self.state[p]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
            state["exp_avg"].lerp_(g, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** state["step"])).add_(eps)
            p.mul_(1 - lr * wd)
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** state["step"]))

    def _sgd(self, group: dict, params: list[Tensor]) -> None:
        """torch.optim.SGD's update: weight decay added to the gradient (L2), no dampening."""
        for p in params:
            d = p.grad.add(p, alpha=group["weight_decay"])
            p.add_(self._momentum(p, d, group), alpha=-group["lr"])
