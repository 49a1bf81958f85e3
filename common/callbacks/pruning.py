"""Unstructured magnitude pruning during training, on a schedule (Lightning's ModelPruning)."""

from lightning.pytorch.callbacks import ModelPruning
from torch import nn


def cubic_sparsity(step: int, steps: int, final: float) -> float:
    """Zhu & Gupta (2017): the sparsity after pruning step `step` of `steps` (1-based),
    final * (1 - (1 - step/steps)^3): large cuts early, while the net recovers easily, and
    small ones at the end."""
    return final * (1 - (1 - min(step, steps) / steps) ** 3)


class MagnitudePruning(ModelPruning):
    """Zero the smallest-magnitude conv and linear weights (compared across all layers at once)
    at the end of each training epoch but the last, on `cubic_sparsity`, so that `sparsity` of
    them are zero when the last epoch starts; the last epoch trains the survivors alone. The
    zeros are made permanent in every checkpoint, which loads into the plain model.

    Zeros alone make neither a smaller file nor a faster step on a CPU without sparse kernels:
    `make compress method=prune` removes whole channels instead (`common/compress.py`)."""

    def __init__(self, sparsity: float = 0.8, **kwargs):
        if not 0 <= sparsity < 1:
            raise ValueError(f"callbacks.pruning.sparsity={sparsity} must be in [0, 1)")
        super().__init__(
            pruning_fn="l1_unstructured",
            amount=self.amount_at,
            use_global_unstructured=True,
            make_pruning_permanent=True,
            **kwargs,
        )
        self.sparsity = sparsity
        self.steps = 1

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self._parameters_to_prune:  # conv and linear weights, not norms or embeddings
            layers = (nn.Linear, nn.modules.conv._ConvNd)
            self._parameters_to_prune = [
                (m, "weight") for m in pl_module.modules() if isinstance(m, layers)
            ]
        self.steps = max(1, (trainer.max_epochs or 1) - 1)
        super().setup(trainer, pl_module, stage)

    def amount_at(self, epoch: int) -> float:
        """The fraction of the still-unpruned weights to prune at the end of `epoch` (0-based):
        torch's pruning masks apply a new amount to the weights that survived the last."""
        if epoch >= self.steps:
            return 0.0
        before = cubic_sparsity(epoch, self.steps, self.sparsity)
        after = cubic_sparsity(epoch + 1, self.steps, self.sparsity)
        return 1 - (1 - after) / (1 - before)
