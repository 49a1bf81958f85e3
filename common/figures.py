"""Figures for loggers: built with matplotlib's object API (no pyplot state, no GUI backend)."""

import io
import math
from pathlib import Path

import matplotlib
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torchvision.utils import make_grid


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
    if max(len(n) for n in names) > 3:  # longer names would run into each other
        for label in ax.get_xticklabels():
            label.set(rotation=45, ha="right", rotation_mode="anchor")
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


def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """Images with values in [0, 1], (N, C, H, W) with C = 1 or 3, -> one uint8 picture
    (3, H', W'): `nrow` images per row (default: as square as N allows), 2-pixel white gaps."""
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    images = images.detach().float().clamp(0, 1).cpu()
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.0)  # grey becomes 3 channels
    return (grid * 255).round().to(torch.uint8)


def save_png(picture: torch.Tensor, path: Path) -> Path:
    """Write a uint8 picture (3, H, W) as a PNG file (folders made as needed); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture.permute(1, 2, 0).cpu().numpy()).save(path)  # (H, W, 3)
    return path


def picture_path(module, tag: str) -> Path:
    """`<run dir>/images/<tag>_epoch<NNN>.png`: a logged picture kept as a file, to look at
    without TensorBoard."""
    name = f"{tag.replace('/', '_')}_epoch{module.current_epoch:03d}.png"
    return Path(module.trainer.default_root_dir) / "images" / name


def log_image_grid(module, tag: str, images: torch.Tensor, nrow: int | None = None) -> None:
    """Log images in [0, 1] (N, C, H, W) as one grid (`log_figure`), and keep it as a file
    (`picture_path`)."""
    if module.trainer.global_rank != 0 or module.trainer.sanity_checking:
        return
    picture = image_grid(images, nrow)
    log_figure(module, tag, picture)
    save_png(picture, picture_path(module, tag))


def log_figure_file(module, tag: str, figure: Figure) -> None:
    """Log a matplotlib figure (`log_figure`) and keep it as a file (`picture_path`)."""
    if module.trainer.global_rank != 0 or module.trainer.sanity_checking:
        return
    path = picture_path(module, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    log_figure(module, tag, figure)  # TensorBoard's add_figure closes the figure: save first


def scatter_figure(
    points: torch.Tensor, labels: torch.Tensor, class_names: list[str] | None = None, title=""
) -> Figure:
    """(N, 2) points coloured by their (N,) integer labels, with a legend of class names."""
    points, labels = points.detach().float().cpu(), labels.detach().cpu()
    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10"]
    for k in labels.unique().tolist():
        at = labels == k
        name = class_names[k] if class_names and k < len(class_names) else str(k)
        ax.scatter(*points[at].t(), s=6, color=cmap(k % 10), label=name, alpha=0.7)
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return fig


def gif_bytes(frames: list, fps: float, width: int = 300) -> tuple[bytes, int, int]:
    """Frames (H, W, 3) uint8 as a looping animated GIF `width` pixels wide: (bytes, width,
    height). One palette for the whole film (per-frame palettes flicker, and cost bytes)."""
    height = round(frames[0].shape[0] * width / frames[0].shape[1])
    pictures = [Image.fromarray(f).resize((width, height), Image.BILINEAR) for f in frames]
    palette = pictures[len(pictures) // 2].quantize(colors=64)
    pictures = [p.quantize(palette=palette, dither=Image.Dither.NONE) for p in pictures]
    out = io.BytesIO()
    pictures[0].save(
        out, "GIF", save_all=True, append_images=pictures[1:], duration=round(1000 / fps), loop=0
    )
    return out.getvalue(), width, height


def save_gif(frames: list, fps: float, path: Path) -> Path:
    """Write frames (H, W, 3) uint8 as an animated GIF (folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gif_bytes(frames, fps)[0])
    return path


def animation_path(module, tag: str) -> Path:
    """`<run dir>/images/<tag>_epoch<NNN>.gif` (`picture_path`'s, for an animation)."""
    return picture_path(module, tag).with_suffix(".gif")


def log_animation(module, tag: str, frames: list, fps: float) -> None:
    """Send frames (H, W, 3) uint8 as an animated GIF to TensorBoard (its image tab plays GIFs;
    `add_video` would need moviepy) and W&B, rank 0 only."""
    if module.trainer.global_rank != 0:
        return
    data, width, height = gif_bytes(frames, fps)
    for logger in module.loggers:
        if isinstance(logger, TensorBoardLogger):
            image = Summary.Image(
                height=height, width=width, colorspace=3, encoded_image_string=data
            )
            summary = Summary(value=[Summary.Value(tag=tag, image=image)])
            logger.experiment.file_writer.add_summary(summary, module.global_step)
        elif isinstance(logger, WandbLogger):
            logger.log_video(
                key=tag, videos=[io.BytesIO(data)], step=module.global_step, format=["gif"]
            )
