"""Draw new images from a trained generative model: `make sample PROJECT=<name> ckpt_path=... n=64`.

The model is rebuilt from the config stored in the checkpoint and loaded with torch's safe
`weights_only` loader, as in `make predict`. A project opts in with the `SamplesImages`
capability (`sample_images(n, seed)` -> (n, C, H, W) floats in [0, 1]); the images are written
as one PNG grid, and its path printed. An existing file is replaced only with overwrite=true.
"""

from pathlib import Path

import torch
from omegaconf import DictConfig

from common.capabilities import SamplesImages
from common.entry import entry
from common.errors import UserError
from common.figures import image_grid, save_png
from common.predict import checkpoint_path, load_trained, output_beside


def sample(cfg: DictConfig) -> Path:
    """Write `cfg.n` samples of the checkpoint `cfg.ckpt_path` as a PNG grid; return its path."""
    n, nrow = cfg.n, cfg.get("nrow")
    if not isinstance(n, int) or n < 1:
        raise UserError(f"n={n} must be a positive whole number of images")
    if nrow is not None and (not isinstance(nrow, int) or nrow < 1):
        raise UserError(f"nrow={nrow} must be a positive whole number (or null: a square grid)")
    ckpt_path = Path(checkpoint_path(cfg))
    # By default beside the checkpoint: logs/<project>/<run>/checkpoints/last_samples_n64_seed42.png;
    # checked before the model loads: the cheap mistakes first.
    path = output_beside(
        cfg, ckpt_path, f"{ckpt_path.stem}_samples_n{n}_seed{cfg.seed}.png", ".png"
    )
    model = load_trained(cfg, str(ckpt_path), SamplesImages, "sample images")
    with torch.inference_mode():
        images = model.sample_images(n, seed=cfg.seed)  # (n, C, H, W) in [0, 1]
    save_png(image_grid(images, nrow), path)
    print(path)
    return path


@entry("sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
