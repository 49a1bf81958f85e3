"""Run a trained model on your input: `make predict PROJECT=<name> ckpt_path=... input=...|text=...`.

The model and its data settings (image size, normalization, class names) are rebuilt from the
config stored in the checkpoint, and the weights loaded with torch's safe `weights_only` loader.
What "predict" means is the project's: its LightningModule implements
`predict_file(path, datamodule, output) -> str` (`input=<file>`: writes its result, such as an
annotated image) and/or `predict_text(text, datamodule) -> str` (`text="..."`), each returning
the text to print.
"""

from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.errors import UserError, exit_on_user_error
from common.instantiate import instantiate_model
from common.resolvers import register_resolvers
from common.runs import load_checkpoint, resolve_ckpt_path, saved_config


def checkpoint_path(cfg: DictConfig) -> str:
    """The checkpoint file `ckpt_path` names (`last`: the project's newest last.ckpt)."""
    path = resolve_ckpt_path(cfg)
    if path is None:
        raise UserError("this needs a checkpoint: ckpt_path=<file>, or ckpt_path=last")
    return path


def load_trained(
    cfg: DictConfig, ckpt_path: str, hook: str, what: str
) -> tuple[L.LightningModule, DictConfig]:
    """(model in eval mode on `cfg.device`, the config it was trained with) from `ckpt_path`;
    its module must have the method `hook` (`what` it does, for the error)."""
    checkpoint = load_checkpoint(ckpt_path)
    saved = saved_config(cfg, checkpoint, ckpt_path)
    model = instantiate_model(saved.model)
    if not hasattr(model, hook):
        raise UserError(f"project '{cfg.name}' does not {what} (its model has no {hook})")
    model.load_state_dict(checkpoint["state_dict"])
    model.on_load_checkpoint(checkpoint)  # what a project keeps beside the weights (a tokenizer)
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    model.to("cpu" if device == "auto" else device).eval()
    return model, saved


def predict(cfg: DictConfig) -> str:
    """Predict on `cfg.input` (a file) or `cfg.text` with the checkpoint `cfg.ckpt_path`; return
    what was printed."""
    text, file = cfg.get("text"), cfg.get("input")
    if (text is None) == (file is None):
        raise UserError('predict needs one of input=<file> or text="..."')
    path = Path(str(file)).expanduser() if file is not None else None
    if path is not None and not path.is_file():
        raise UserError(f"input={file}: no such file")
    ckpt_path = checkpoint_path(cfg)
    if text is not None:
        model, saved = load_trained(cfg, ckpt_path, "predict_text", "predict from text=")
    else:
        model, saved = load_trained(cfg, ckpt_path, "predict_file", "predict from input=")
    datamodule = instantiate(saved.data)
    with torch.inference_mode():
        if text is not None:
            result = model.predict_text(str(text), datamodule)
        else:
            output = Path(cfg.output) if cfg.get("output") else None
            result = model.predict_file(path, datamodule, output)
    print(result)
    return result


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    register_resolvers()
    main()
