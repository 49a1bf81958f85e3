"""What every project's LightningModule shares: optimizers from config, and its data in one place."""

import inspect
import math
from collections.abc import Callable

import lightning as L
import torch

from common.data import DataModule, DataSpec
from common.errors import UserError


class TemplateModule(L.LightningModule):
    """A LightningModule whose optimizer and scheduler come from config as partials, and which
    learns about its data through one hook.

    `optimizer` is called with `optimizer_params()`; `scheduler` (or None) with the optimizer,
    with `total_steps` when it takes one (OneCycleLR, `warmup_cosine` below): such schedulers
    step every batch, others every epoch; and with each group's lr as `max_lr` (OneCycleLR).

    Data: before fitting or testing, `setup` hands the datamodule's `DataSpec` (class names,
    normalization, tokenizer, ...) to `use_data`, which stores it as `data_spec`; override
    `use_data` to act on it, calling super. The spec is saved in every checkpoint and restored
    from it, so a model loaded for `make predict` knows its data without any data. Overrides
    of `setup`, `on_save_checkpoint` and `on_load_checkpoint` call super.
    """

    def __init__(self, optimizer: Callable | None = None, scheduler: Callable | None = None):
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.data_spec = DataSpec()
        self._spec_from_datamodule = False

    def logs_this_step(self) -> bool:
        """Whether the loggers write this training step's on-step metrics: every
        `trainer.log_every_n_steps`-th step, as Lightning counts them for its loggers (optimizer
        steps under automatic optimization; batches under manual, however many optimizer steps
        each takes). A `self.log` costs ~1 ms of host time on every call (Lightning moves its
        stored result to the value's device), which on a small GPU step is more than the step:
        call it only when the value will be written. Under fast_dev_run every step is written."""
        trainer = self.trainer
        if (
            trainer.fast_dev_run
            or trainer.should_stop  # Lightning writes the step a stop was asked at
            or trainer.log_every_n_steps <= 1
        ):
            return True
        if self.automatic_optimization:
            step = self.global_step
        else:  # several optimizer steps a batch (two optimizers, say): the loggers count one
            step = trainer.fit_loop.epoch_loop.total_batch_idx
        return (step + 1) % trainer.log_every_n_steps == 0

    def use_data(self, spec: DataSpec) -> None:
        """Receive what the model may know about its data."""
        self.data_spec = spec

    def setup(self, stage: str) -> None:
        # Lightning sets the datamodule up first: its spec is complete here.
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, DataModule):
            self.use_data(datamodule.spec())
            self._spec_from_datamodule = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["data_spec"] = self.data_spec.to_dict()  # plain values: weights_only loads it

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("data_spec")
        if saved is None:
            return
        if not self._spec_from_datamodule:  # loaded on its own: make predict, make sample
            self.use_data(DataSpec.from_dict(saved))
            return
        # A resumed or tested run keeps the live datamodule's spec: it must describe the data
        # the weights learned, or every token id or class index would mean something else.
        live = self.data_spec
        if saved.get("tokenizer") and live.tokenizer and saved["tokenizer"] != live.tokenizer:
            raise UserError(
                "the data's tokenizer is not the one this checkpoint was trained with (other "
                "training texts, seed or vocab_size): use the data it was trained on"
            )
        names = saved.get("class_names")
        if names and live.class_names and len(names) != len(live.class_names):
            raise UserError(
                f"the checkpoint was trained on {len(names)} classes and the data has "
                f"{len(live.class_names)}: use the data it was trained on"
            )
        for key in ("sample_rate", "num_samples"):  # the clips the weights learned from
            ours, theirs = getattr(live, key), saved.get(key)
            if ours is not None and theirs is not None and ours != theirs:
                raise UserError(
                    f"the checkpoint was trained on clips of {key}={theirs} and the data has "
                    f"{key}={ours}: use the data it was trained on"
                )

    def optimizer_params(self):
        """What the optimizer is called with: the parameters, or (name, parameter) pairs for an
        optimizer that routes by name (`common.optim.Muon`). Override to make param groups."""
        factory = getattr(self.optimizer_factory, "func", self.optimizer_factory)
        if getattr(factory, "takes_named_params", False):
            return list(self.named_parameters())
        return self.parameters()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.optimizer_params())
        if self.scheduler_factory is None:
            return optimizer
        takes = inspect.signature(self.scheduler_factory).parameters
        given = getattr(self.scheduler_factory, "keywords", {})
        per_step = "total_steps" in takes
        kwargs = {}
        if per_step and "total_steps" not in given:
            kwargs["total_steps"] = self.trainer.estimated_stepping_batches
        if "max_lr" in takes and "max_lr" not in given:
            # OneCycleLR peaks at each group's own lr, so groups keep their ratios (Muon's
            # matrices and its fallback; a backbone trained slower than a new head).
            kwargs["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        try:
            scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        except (ZeroDivisionError, ValueError) as err:
            # OneCycleLR divides by the length of its phases: a run of a few steps has none.
            steps = kwargs.get("total_steps", given.get("total_steps"))
            name = getattr(self.scheduler_factory, "func", self.scheduler_factory).__name__
            raise UserError(
                f"the learning-rate schedule {name} cannot run over {steps} optimizer steps "
                f"({type(err).__name__}: {err}): train for more steps, or drop the schedule "
                "with model.scheduler=null"
            ) from None
        interval = "step" if per_step else "epoch"
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay to `min_lr_ratio` of the base learning rate, per step."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
