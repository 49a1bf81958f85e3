"""Run a trained model on your own input: `make predict PROJECT=<name> ckpt_path=... input=...`.

The model and its data settings (image size, normalization, class names) are rebuilt from the
config stored in the checkpoint, and the weights loaded with torch's safe `weights_only` loader.
What "predict" means is the project's: its LightningModule implements
`predict_file(path, datamodule, output) -> str`, which writes its result (an annotated image, a
label) and returns the text to print.
"""

from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.errors import UserError, exit_on_user_error
from common.resolvers import register_resolvers
from common.runs import load_checkpoint, resolve_ckpt_path, saved_config


def predict(cfg: DictConfig) -> str:
    """Predict on `cfg.input` with the checkpoint `cfg.ckpt_path`; return what was printed."""
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path is None:
        raise UserError("predict needs a checkpoint: ckpt_path=<file>, or ckpt_path=last")
    path = Path(str(cfg.input)).expanduser()
    if not path.is_file():
        raise UserError(f"input={cfg.input}: no such file")
    checkpoint = load_checkpoint(ckpt_path)
    saved = saved_config(cfg, checkpoint, ckpt_path)
    model = instantiate(saved.model)
    if not hasattr(model, "predict_file"):
        raise UserError(
            f"project '{cfg.name}' has no predict command (its model has no predict_file)"
        )
    model.load_state_dict(checkpoint["state_dict"])
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    model.to("cpu" if device == "auto" else device).eval()
    datamodule = instantiate(saved.data)
    output = Path(cfg.output) if cfg.get("output") else None
    with torch.inference_mode():
        text = model.predict_file(path, datamodule, output)
    print(text)
    return text


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    register_resolvers()
    main()
