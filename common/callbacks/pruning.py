"""Unstructured magnitude pruning during training, on a schedule (Lightning's ModelPruning)."""

import torch
from lightning.pytorch.callbacks import ModelPruning
from torch import nn

from common.errors import UserError


def cubic_sparsity(step: int, steps: int, final: float) -> float:
    """Zhu & Gupta (2017): the sparsity after pruning step `step` of `steps` (1-based),
    final * (1 - (1 - step/steps)^3): large cuts early, while the net recovers easily, and
    small ones at the end."""
    return final * (1 - (1 - min(step, steps) / steps) ** 3)


def next_amount(target: float, masked: float) -> float:
    """The fraction of the still-unmasked weights to prune so that `target` of all of them are
    pruned, when `masked` of them already are: torch's pruning masks apply a new amount to the
    weights the last masks left."""
    return max(0.0, (target - masked) / (1 - masked))


class MagnitudePruning(ModelPruning):
    """Zero the smallest-magnitude conv and linear weights (compared across all layers at once)
    at the end of each training epoch but the last, on `cubic_sparsity`, so that `sparsity` of
    them are zero when the last epoch starts; the last epoch trains the survivors alone. The
    zeros are made permanent in every checkpoint, which loads into the plain model; a resumed
    run (whose checkpoint holds zeros, not masks) prunes the zeros first and stays on schedule.

    Zeros alone make neither a smaller file nor a faster step on a CPU without sparse kernels:
    `make compress method=prune` removes whole channels instead (`common/compress.py`)."""

    def __init__(self, sparsity: float = 0.8, **kwargs):
        if not 0 <= sparsity < 1:
            raise UserError(f"callbacks.pruning.sparsity={sparsity} must be in [0, 1)")
        super().__init__(
            pruning_fn="l1_unstructured",
            amount=self.amount_at,
            use_global_unstructured=True,
            make_pruning_permanent=True,
            **kwargs,
        )
        self.sparsity = sparsity
        self.steps = 1
        self.layers: list[nn.Module] = []

    def filter_parameters_to_prune(self, parameters_to_prune=()):
        """Conv and linear weights only: not norms, biases or embeddings."""
        kinds = (nn.Linear, nn.modules.conv._ConvNd)
        kept = [(m, name) for m, name in parameters_to_prune if isinstance(m, kinds)]
        kept = [(m, name) for m, name in kept if name == "weight"]
        self.layers = [m for m, _ in kept]
        return kept

    def setup(self, trainer, pl_module, stage: str) -> None:
        epochs = trainer.max_epochs
        if epochs is None or epochs < 1:
            raise UserError(
                "callbacks.pruning prunes on a schedule over epochs: set trainer.max_epochs"
            )
        self.steps = max(1, epochs - 1)
        super().setup(trainer, pl_module, stage)

    def masked(self) -> float:
        """The fraction of the pruned layers' weights that their masks zero now."""
        masks = [getattr(m, "weight_mask", None) for m in self.layers]
        total = sum(m.weight.numel() for m in self.layers)
        zeros = sum(int((mask == 0).sum()) for mask in masks if isinstance(mask, torch.Tensor))
        return zeros / max(total, 1)

    def amount_at(self, epoch: int) -> float:
        """The amount to prune at the end of `epoch` (0-based) to reach the schedule's sparsity."""
        if epoch >= self.steps:
            return 0.0
        return next_amount(cubic_sparsity(epoch + 1, self.steps, self.sparsity), self.masked())
