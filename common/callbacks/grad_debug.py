"""`debug=grad`: what the gradients and activations of any project do while it trains.

Every `every_n_steps` optimizer steps it logs, per parameter, the gradient norm
(`grad_norm/<param>`) and the size of the step relative to the weight
(`update_ratio/<param>` = |w_after - w_before| / |w_before|, ~1e-3 is healthy for Adam-like
optimizers: far above, the learning rate is too high; far below, that layer barely learns), and
per layer the mean and std of its output (`act_mean/<layer>`, `act_std/<layer>`, histograms in
TensorBoard) and the fraction of it at exactly 0 (`act_zeros/<layer>`: dead ReLUs). At every
optimizer step it checks that the loss, every layer's output and every gradient are finite and
stops at the first NaN/Inf with one line naming the layer (under DDP every process stops, at the
same step); at the end it names the parameters no gradient ever reached (dead) or that stopped
getting one, and draws the curves into one picture.

Cost: two device syncs per optimizer step (the finite checks; under DDP one all-reduce of a flag
too), a few reductions per layer, a copy of the weights on logging steps. A debugging tool, not
for timed runs.
"""

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from common.errors import UserError
from common.figures import log_figure

# Layers whose output says nothing the layer before did not: no hook.
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten)
HEALTHY_RATIO = 1e-3


def first_float_tensor(output) -> torch.Tensor | None:
    """The first floating-point tensor of a layer's output: a tensor, a PackedSequence (LSTM),
    or one inside a tuple, list or dict ((output, (h, c)) of an LSTM)."""
    if isinstance(output, PackedSequence):
        output = output.data
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    values = output.values() if isinstance(output, dict) else output
    if isinstance(values, (tuple, list, type({}.values()))):
        for value in values:
            found = first_float_tensor(value)
            if found is not None:
                return found
    return None


class GradientDebugger(L.Callback):
    def __init__(
        self,
        every_n_steps: int | None = None,
        histograms: bool = True,
        figure: str | None = None,
        stop_on_nonfinite: bool = True,
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise UserError(f"debug=grad: every_n_steps={every_n_steps} must be >= 1 (or null)")
        self.every_n_steps = every_n_steps
        self.histograms = histograms
        self.figure = figure
        self.stop_on_nonfinite = stop_on_nonfinite
        self.hooks: list = []
        self.history: dict[str, list[tuple[int, float]]] = {}  # tag -> [(step, value)]
        self.recording = False

    # -- setup ---------------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module):
        self.every = self.every_n_steps or trainer.log_every_n_steps
        # fp16 with a loss scaler makes Inf gradients on purpose, and skips those steps.
        self.scaled = trainer.precision == "16-mixed"
        # The parameters the optimizers update, by name (a frozen one is not watched).
        named = list(pl_module.named_parameters())
        by_id = {id(p): n for n, p in named}
        self.names = {
            id(p): by_id[id(p)]
            for opt in trainer.optimizers
            for group in opt.param_groups
            for p in group["params"]
            if id(p) in by_id and p.requires_grad
        }
        self.order = {n: i for i, (n, _) in enumerate(named)}  # registration: input to output
        self.matrices = {n for n, p in named if p.dim() > 1}  # a curve each in the picture
        self.layer_of_param: dict[str, str] = {}
        for name, module in pl_module.named_modules():
            leaf = next(module.children(), None) is None
            if leaf and name and not isinstance(module, PASS_THROUGH):
                self.hooks.append(module.register_forward_hook(self._forward_hook(name)))
            for pname, _ in module.named_parameters(prefix=name, recurse=False):
                self.layer_of_param[pname] = f"{name} ({type(module).__name__})"
        self.alive: dict[str, torch.Tensor] = {}  # param -> entries that ever got a gradient
        self.last_alive: dict[str, torch.Tensor] = {}  # param -> last step it got one (0-d)
        self.pending: dict[str, tuple[nn.Parameter, torch.Tensor, int]] = {}
        self.outputs: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
        self.losses: list[torch.Tensor] = []
        self.stats, self.samples, self.acts_logged_at = [], {}, -1

    def _forward_hook(self, name: str):
        def hook(module, inputs, output):
            if not (self.recording and torch.is_grad_enabled()):
                return  # validation, rollouts collected without gradients
            out = first_float_tensor(output)
            if out is None:
                return
            out = out.detach()
            if self.stop_on_nonfinite:
                given = first_float_tensor(inputs)
                given_ok = (
                    torch.isfinite(given).all() if given is not None else out.isfinite().all()
                )
                self.outputs.append((name, module, given_ok, torch.isfinite(out).all()))
            if self.logging_acts:
                x = out.float()
                std = x.std() if x.numel() > 1 else x.new_zeros(())
                self.stats.append((name, x.mean(), std, (x == 0).float().mean()))
                if self.histograms:  # ~10k values per layer, copied: an in-place op may follow
                    self.samples[name] = x.flatten()[:: max(1, x.numel() // 10_000)].clone()

        return hook

    def _remove_hooks(self):
        for handle in self.hooks:
            handle.remove()
        self.hooks = []

    # -- every step ----------------------------------------------------------------------------

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.recording = True
        # Activations once per logged step (several batches feed one step under accumulation).
        self.acts_step = trainer.global_step  # the optimizer step this batch leads to
        self.logging_acts = (
            self.acts_step % self.every == 0 and self.acts_step != self.acts_logged_at
        )

    def on_before_backward(self, trainer, pl_module, loss):
        if self.recording and self.stop_on_nonfinite:
            self.losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = trainer.global_step
        self._resolve_updates(trainer)  # the previous optimizer step's update ratios
        named = [
            (self.names[id(p)], p)
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None and id(p) in self.names
        ]
        norms = [torch.linalg.vector_norm(p.grad.detach().float()) for _, p in named]
        if self.stop_on_nonfinite:
            self._check(trainer, named, norms)
        if not named:
            return
        seen = [p.grad.detach() != 0 for _, p in named]
        got = torch.stack([s.any() for s in seen])  # on the device: no sync
        before = torch.stack(
            [self.last_alive.get(n, torch.full((), -1, device=got.device)) for n, _ in named]
        )
        last = torch.where(got, step, before)
        for i, ((name, _), entries) in enumerate(zip(named, seen, strict=True)):
            self.alive[name] = entries if name not in self.alive else self.alive[name] | entries
            self.last_alive[name] = last[i]
        if step % self.every == 0 and trainer.is_global_zero:
            values = dict(
                zip((f"grad_norm/{n}" for n, _ in named), torch.stack(norms).tolist(), strict=True)
            )
            self._log(trainer, values, step)
            for name, p in named:  # the weights before this step, for the update ratio
                self.pending[name] = (p, p.detach().clone(), step)

    def _resolve_updates(self, trainer):
        """|w_after - w_before| / |w_before| of the step the pending weights were copied before
        (the optimizer has stepped once since)."""
        if not self.pending:
            return
        ratios = {}
        for name, (p, before, step) in self.pending.items():
            change = torch.linalg.vector_norm((p.detach() - before).float())
            size = torch.linalg.vector_norm(before.float())
            # A weight at 0 (a fresh bias) has no scale to compare the step with: NaN, not logged.
            ratios[name] = (step, torch.where(size > 0, change / size, torch.nan))
        self.pending = {}
        values = torch.stack([r for _, r in ratios.values()]).tolist()
        by_step: dict[int, dict[str, float]] = {}  # one logger call per step
        for (name, (step, _)), value in zip(ratios.items(), values, strict=True):
            if not math.isnan(value):
                by_step.setdefault(step, {})[f"update_ratio/{name}"] = value
        for step, metrics in by_step.items():
            self._log(trainer, metrics, step)

    def _check(self, trainer, named, norms):
        """Stop, on every process, at the first NaN/Inf of this step: in a layer's output, in the
        loss, in a gradient."""
        problem = self._forward_problem()
        if problem is None and self.losses:
            losses = torch.stack([loss.float().mean() for loss in self.losses])
            self.losses = []
            if not bool(losses.isfinite().all()):
                problem = (
                    f"the loss is {losses[~losses.isfinite()][0].item()} while every layer's "
                    "output was finite: the outputs grew too large for the loss (too high a "
                    "learning rate; trainer.gradient_clip_val=1.0 bounds the steps)"
                )
        if problem is None and norms and not self.scaled:
            finite = torch.stack(norms).isfinite().tolist()
            if not all(finite):
                problem = self._gradient_cause(
                    [n for (n, _), ok in zip(named, finite, strict=True) if not ok]
                )
        self._stop_if(trainer, problem)

    def _forward_problem(self) -> str | None:
        """Which layer's output held NaN/Inf first in this step's forward passes, and why."""
        if not self.outputs:
            return None
        flags = torch.stack([torch.stack([i, o]) for _, _, i, o in self.outputs]).tolist()
        calls, self.outputs = self.outputs, []  # one sync for the whole forward pass
        if all(o for _, o in flags):
            return None
        first = next(k for k, (_, o) in enumerate(flags) if not o)
        name, module, _, _ = calls[first]
        layer = f"{name} ({type(module).__name__})"
        weights = list(module.parameters(recurse=False))
        if not flags[first][0]:
            cause = (
                "and so was its input: the batch holds NaN/Inf (the data, or what the step did "
                "to it before the net)"
                if first == 0
                else "and so was its input, made outside any layer (an operation in forward())"
            )
        elif weights and not all(bool(torch.isfinite(p).all()) for p in weights):
            cause = (
                "because its weights are: an earlier update blew them up (too high a learning "
                "rate; gradient clipping, trainer.gradient_clip_val=1.0, bounds the steps)"
            )
        else:
            cause = (
                "from a finite input and finite weights: the values overflowed (activations "
                "growing layer after layer: a missing normalization or too high a learning rate)"
            )
        return f"the output of {layer} is the first to hold NaN/Inf, {cause}"

    def _gradient_cause(self, bad: list[str]) -> str:
        # Backward meets the NaN first at the parameter nearest the output: registered last.
        last = max(bad, key=self.order.get)
        others = f" (and {len(bad) - 1} other parameters)" if len(bad) > 1 else ""
        return (
            f"the gradient of {last}, in layer {self.layer_of_param.get(last, '?')}, holds "
            f"NaN/Inf{others} while the loss and every layer's output were finite: a backward "
            "formula made it (a sqrt or log at 0, a division by a zero norm); "
            "trainer.detect_anomaly=true names the operation"
        )

    def _stop_if(self, trainer, problem: str | None):
        """Under DDP the processes agree first: one that saw nothing stops with the rest."""
        if not trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            return
        self._remove_hooks()
        if trainer.is_global_zero:
            rank_zero_info("\n".join(self.summary(trainer, stopped=True)))
        message = problem or (
            "another process met NaN/Inf (its own error names the layer; trainer.devices=1 "
            "shows it in one process)"
        )
        raise UserError(f"debug=grad: step {trainer.global_step}: {message}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.recording = False
        if self.stop_on_nonfinite:  # a forward pass with no optimizer step after it (yet)
            self._stop_if(trainer, self._forward_problem())
        self._resolve_updates(trainer)
        if not (trainer.is_global_zero and self.stats):
            self.stats, self.samples = [], {}
            return
        step = self.acts_logged_at = self.acts_step
        metrics = {}
        for name, mean, std, zeros in self.stats:
            metrics[f"act_mean/{name}"], metrics[f"act_std/{name}"] = mean, std
            metrics[f"act_zeros/{name}"] = zeros  # a ReLU's output at 0: units that pass nothing
        values = dict(zip(metrics, torch.stack(list(metrics.values())).tolist(), strict=True))
        self._log(trainer, values, step)
        if self.samples and self.histograms:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    for name, sample in self.samples.items():
                        sample = sample[sample.isfinite()].cpu()  # NaN/Inf have no bin
                        if len(sample):
                            logger.experiment.add_histogram(f"act/{name}", sample, step)
        self.stats, self.samples = [], {}

    # -- the end -------------------------------------------------------------------------------

    def on_train_end(self, trainer, pl_module):
        self._remove_hooks()
        if trainer.is_global_zero:
            rank_zero_info("\n".join(self.summary(trainer)))

    def teardown(self, trainer, pl_module, stage):
        self._remove_hooks()  # a fit that never trained (limit_train_batches=0) ends here

    def summary(self, trainer, stopped: bool = False) -> list[str]:
        """What went wrong, in a few lines; the curves saved to `figure`. A run stopped by a
        NaN names no dead parameters: the gradients of its last step never arrived."""
        steps = trainer.global_step
        dead = [n for n in self.names.values() if n not in self.alive or not self.alive[n].any()]
        if stopped or not self.alive:
            dead = []
        logged = len({s for points in self.history.values() for s, _ in points})
        lines = [f"debug=grad: {len(self.names)} parameters watched over {logged} logged steps"]
        if dead:
            lines.append(f"  dead (no nonzero gradient in {steps} steps): " + ", ".join(dead))
        stopped = {
            n: int(last)
            for n, last in self.last_alive.items()
            if n not in dead and steps >= 20 and int(last) < 0.9 * (steps - 1)
        }
        if stopped:
            lines.append(
                f"  stopped learning (every gradient zero after step {max(stopped.values())} "
                f"of {steps}): " + ", ".join(stopped)
            )
        partly = {n: 1 - a.float().mean().item() for n, a in self.alive.items() if n not in dead}
        for name, fraction in sorted(partly.items(), key=lambda kv: -kv[1])[:5]:
            if fraction >= 0.1:
                lines.append(f"  {fraction:.0%} of {name} never got a gradient")
        zeros = {n: v for n, v in self._last("act_zeros/").items() if v >= 0.9}
        if zeros:
            lines.append(
                "  layers whose output is >= 90% zeros (dead units): "
                + ", ".join(f"{n} {v:.0%}" for n, v in zeros.items())
            )
        # Weight matrices and kernels: a bias or a norm's shift near 0 makes any ratio large.
        ratios = {n: v for n, v in self._last("update_ratio/").items() if n in self.matrices}
        if ratios:
            peak, tag = max(
                (value, (step, tag))
                for tag, points in self.history.items()
                if tag.removeprefix("update_ratio/") in ratios
                for step, value in points
                if math.isfinite(value)
            )
            high, low = max(ratios, key=ratios.get), min(ratios, key=ratios.get)
            lines.append(
                f"  update/weight ratio (~{HEALTHY_RATIO:.0e} is healthy): peak {peak:.1e} "
                f"({tag[1].removeprefix('update_ratio/')}, step {tag[0]}); last logged "
                f"{ratios[high]:.1e} ({high}) to {ratios[low]:.1e} ({low})"
            )
        if self.figure and self.history:
            figure = self.draw()
            path = Path(self.figure)
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path)
            log_figure(trainer.lightning_module, "debug/grad", figure)
            lines.append(f"  curves: {path}")
        return lines

    def on_exception(self, trainer, pl_module, exception):
        self._remove_hooks()

    # -- helpers -------------------------------------------------------------------------------

    def _log(self, trainer, metrics: dict[str, float], step: int):
        """To every logger, and to the history the summary and the picture are made from."""
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        for tag, value in metrics.items():
            if not tag.startswith("act_mean/"):
                self.history.setdefault(tag, []).append((step, value))

    def _last(self, prefix: str) -> dict[str, float]:
        return {
            tag[len(prefix) :]: points[-1][1]
            for tag, points in self.history.items()
            if tag.startswith(prefix) and math.isfinite(points[-1][1])
        }

    def draw(self) -> Figure:
        """Four panels, one line per layer coloured from input (dark) to output (light)."""
        fig = Figure(figsize=(16, 3.8), dpi=100)
        panels = [
            ("grad_norm/", "gradient norm", True),
            ("update_ratio/", "update / weight", True),
            ("act_std/", "output std", True),
            ("act_zeros/", "output: fraction of zeros", False),
        ]
        for i, (prefix, title, log) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            tags = [t for t in self.history if t.startswith(prefix)]
            if prefix in ("grad_norm/", "update_ratio/"):  # biases and norm scales would crowd it
                tags = [t for t in tags if t[len(prefix) :] in self.matrices] or tags
            for j, tag in enumerate(tags):
                steps, values = zip(*self.history[tag], strict=True)
                color = colormaps["viridis"](j / max(1, len(tags) - 1))
                label = tag[len(prefix) :] if j in (0, len(tags) - 1) else None
                ax.plot(steps, values, color=color, label=label, linewidth=1)
            if prefix == "update_ratio/":
                ax.axhline(HEALTHY_RATIO, color="grey", linestyle="--", linewidth=1)
            if log:
                ax.set_yscale("log")
            ax.set(title=title, xlabel="step")
            if tags:
                ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        return fig
