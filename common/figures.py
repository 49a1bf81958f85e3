"""Figures for loggers: built with matplotlib's object API (no pyplot state, no GUI backend)."""

import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure


def confusion_matrix_figure(matrix: torch.Tensor, class_names: list[str] | None = None) -> Figure:
    """Heat map of a (K, K) confusion matrix, rows = true class, normalized per row."""
    counts = matrix.detach().cpu().float()
    rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    k = counts.shape[0]
    names = class_names or [str(i) for i in range(k)]
    fig = Figure(figsize=(1.0 + 0.5 * k, 0.8 + 0.5 * k), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(k), yticks=range(k), xticklabels=names, yticklabels=names)
    ax.set(xlabel="predicted", ylabel="true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return fig


def log_figure(module, tag: str, picture: Figure | torch.Tensor) -> None:
    """Send a matplotlib figure, or a uint8 image (3, H, W), to every attached logger that shows
    images (TensorBoard, W&B), rank 0 only."""
    if module.trainer.global_rank != 0:
        return
    is_figure = isinstance(picture, Figure)
    for logger in module.loggers:
        if isinstance(logger, TensorBoardLogger):
            add = logger.experiment.add_figure if is_figure else logger.experiment.add_image
            add(tag, picture, global_step=module.global_step)
        elif isinstance(logger, WandbLogger):
            image = picture if is_figure else picture.permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
            logger.log_image(key=tag, images=[image], step=module.global_step)
