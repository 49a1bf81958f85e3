"""`debug=grad`: what the gradients and activations of any project do while it trains.

Every `every_n_steps` optimizer steps it logs, per parameter, the gradient norm
(`grad_norm/<param>`) and the size of the step relative to the weight
(`update_ratio/<param>` = |w_after - w_before| / |w_before|, ~1e-3 is healthy for Adam-like
optimizers: far above, the learning rate is too high; far below, that layer barely learns), and
per layer the mean and std of its output (`act_mean/<layer>`, `act_std/<layer>`, histograms in
TensorBoard). At every step it checks that every layer's output and every gradient is finite and
stops at the first NaN/Inf with one line naming the layer; at the end it names the parameters no
gradient ever reached (dead) and draws the curves into one picture.

Cost: one device sync per step (the finite check) and a reduction per layer; the logging steps
copy the weights once. A debugging tool, not for timed runs.
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

    # -- setup ---------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module):
        self.every = self.every_n_steps or trainer.log_every_n_steps
        # fp16's loss scaler makes Inf gradients on purpose and skips those steps.
        self.scaled = str(trainer.precision).startswith("16")
        self.recording = False
        self.layer_of_param: dict[str, str] = {}
        self.layers: list[tuple[str, nn.Module]] = []
        for name, module in pl_module.named_modules():
            leaf = next(module.children(), None) is None
            if leaf and name and not isinstance(module, PASS_THROUGH):
                self.layers.append((name, module))
                self.hooks.append(module.register_forward_hook(self._forward_hook(name)))
            for pname, _ in module.named_parameters(prefix=name, recurse=False):
                self.layer_of_param[pname] = f"{name} ({type(module).__name__})"
        self.alive: dict[str, torch.Tensor] = {}  # param -> entries that ever got a gradient
        self.last_alive: dict[str, torch.Tensor] = {}  # param -> last step it got one
        self.pending: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}

    def on_train_start(self, trainer, pl_module):
        # The parameters the optimizers update, by name (a frozen target network is not one).
        names = {id(p): n for n, p in pl_module.named_parameters()}
        self.names = {
            id(p): names[id(p)]
            for opt in trainer.optimizers
            for group in opt.param_groups
            for p in group["params"]
            if id(p) in names
        }
        # Weight matrices and kernels: the curves worth a line each in the picture.
        self.matrices = {n for n, p in pl_module.named_parameters() if p.dim() > 1}

    def _forward_hook(self, name: str):
        def hook(module, inputs, output):
            if not (self.recording and torch.is_grad_enabled()):
                return  # validation, rollouts collected without gradients
            out = first_float_tensor(output)
            if out is None:
                return
            out = out.detach()
            given = first_float_tensor(inputs)
            given_ok = (
                torch.isfinite(given).all()
                if given is not None
                else out.new_ones((), dtype=torch.bool)
            )
            self.outputs.append((name, module, given_ok, torch.isfinite(out).all()))
            if self.logging:
                x = out.float()
                std = x.std() if x.numel() > 1 else x.new_zeros(())
                self.stats.append((name, x.mean(), std, (x == 0).float().mean()))
                if self.histograms:  # at most ~10k values per layer reach the CPU
                    self.samples[name] = x.flatten()[:: max(1, x.numel() // 10_000)]

        return hook

    def _remove_hooks(self):
        for handle in self.hooks:
            handle.remove()
        self.hooks = []

    # -- every step ----------------------------------------------------------------------------

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.recording = True
        self.logging = trainer.global_step % self.every == 0
        # (layer name, layer, input finite?, output finite?) in the order the layers ran
        self.outputs: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
        self.stats, self.samples, self.losses = [], {}, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._check_forward(trainer)
        named = [
            (self.names[id(p)], p)
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None and id(p) in self.names
        ]
        if not named:
            return
        norms = torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for _, p in named])
        for name, p in named:  # on the device: no sync
            seen = p.grad.detach() != 0
            self.alive[name] = seen if name not in self.alive else self.alive[name] | seen
            step = torch.tensor(trainer.global_step, device=seen.device)
            self.last_alive[name] = torch.where(seen.any(), step, self.last_alive.get(name, -1))
        if self.stop_on_nonfinite and not self.scaled and not bool(norms.isfinite().all()):
            self._stop(trainer, self._gradient_cause(named, norms))
        if self.logging and trainer.is_global_zero:
            values = {f"grad_norm/{n}": v for (n, _), v in zip(named, norms.tolist(), strict=True)}
            self._log(trainer, values)
            self._record(trainer.global_step, values)
            for name, p in named:  # the weights before this step, for the update ratio
                self.pending[name] = (p, p.detach().clone())

    def _gradient_cause(self, named, norms) -> str:
        losses = [loss for loss in self.losses if not bool(torch.isfinite(loss).all())]
        if losses:
            return (
                f"the loss is {losses[0].float().mean().item()} while every layer's output was "
                "finite: the outputs grew too large for the loss (too high a learning rate; "
                "trainer.gradient_clip_val=1.0 bounds the steps)"
            )
        # Parameters in the order they were registered, roughly input to output: the last one
        # is where backward met the NaN first.
        bad = [n for (n, _), ok in zip(named, norms.isfinite().tolist(), strict=True) if not ok]
        others = f" (and {len(bad) - 1} parameters before it)" if len(bad) > 1 else ""
        return (
            f"the gradient of {bad[-1]}, in layer {self.layer_of_param.get(bad[-1], '?')}, holds "
            f"NaN/Inf{others} while the loss and every layer's output were finite: a backward "
            "formula made it (a sqrt or log at 0, a division by a zero norm); "
            "trainer.detect_anomaly=true names the operation"
        )

    def on_before_backward(self, trainer, pl_module, loss):
        if self.recording:
            self.losses.append(loss.detach())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.recording = False
        self._check_forward(trainer)  # a step without an optimizer step (accumulation)
        if not trainer.is_global_zero:
            return
        step = trainer.global_step - 1  # the step just taken
        metrics = {}
        for name, (p, before) in self.pending.items():
            change = torch.linalg.vector_norm((p.detach() - before).float())
            metrics[f"update_ratio/{name}"] = change / (
                torch.linalg.vector_norm(before.float()) + 1e-12
            )
        for name, mean, std, zeros in self.stats:
            metrics[f"act_mean/{name}"], metrics[f"act_std/{name}"] = mean, std
            metrics[f"act_zeros/{name}"] = zeros  # a ReLU's output at 0: units that pass nothing
        if metrics:
            values = dict(zip(metrics, torch.stack(list(metrics.values())).tolist(), strict=True))
            self._log(trainer, values)
            self._record(step, {k: v for k, v in values.items() if not k.startswith("act_mean")})
        if self.samples and self.histograms:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    for name, values in self.samples.items():
                        values = values[values.isfinite()].cpu()  # NaN/Inf have no bin
                        if len(values):
                            logger.experiment.add_histogram(f"act/{name}", values, step)
        self.pending, self.stats, self.samples = {}, [], {}

    def _check_forward(self, trainer):
        if not (self.stop_on_nonfinite and self.outputs):
            return
        flags = torch.stack([torch.stack([i, o]) for _, _, i, o in self.outputs]).tolist()
        calls, self.outputs = self.outputs, []  # one sync for the whole forward pass
        if all(o for _, o in flags):
            return
        first = next(k for k, (_, o) in enumerate(flags) if not o)
        name, module, _, _ = calls[first]
        layer = f"{name} ({type(module).__name__})"
        weights = [p for p in module.parameters(recurse=False)]
        if not flags[first][0]:
            cause = (
                "and so was its input: the batch itself holds NaN/Inf (check the data)"
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
        self._stop(trainer, f"the output of {layer} is the first to hold NaN/Inf, {cause}")

    # -- the end -------------------------------------------------------------------------------

    def on_train_end(self, trainer, pl_module):
        self._remove_hooks()
        if trainer.is_global_zero:
            rank_zero_info("\n".join(self.summary(trainer)))

    def summary(self, trainer) -> list[str]:
        """What went wrong, in a few lines; the curves saved to `figure`."""
        steps = trainer.global_step
        dead = [n for n in self.names.values() if n not in self.alive or not self.alive[n].any()]
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
        ratios = self._last("update_ratio/")
        if ratios:
            peak, tag = max(
                (value, (step, tag))
                for tag, points in self.history.items()
                if tag.startswith("update_ratio/")
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

    def _stop(self, trainer, message: str):
        """One line for the error; the curves up to here and what they say, above it."""
        self._remove_hooks()
        if trainer.is_global_zero:
            rank_zero_info("\n".join(self.summary(trainer)))
        raise UserError(f"debug=grad: step {trainer.global_step}: {message}")

    @staticmethod
    def _log(trainer, metrics: dict[str, float]):
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _record(self, step: int, values: dict[str, float]):
        for tag, value in values.items():
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
