"""Run a trained model on your input: `make predict PROJECT=<name> ckpt_path=... input=...|text=...`.

The model is rebuilt from the config stored in the checkpoint and loaded with torch's safe
`weights_only` loader; what it knows of its data (image size, normalization, class names, its
tokenizer) comes with the checkpoint too, so no data is needed. What "predict" means is the
project's: its model has the `PredictsFile` capability (`input=<file>`) and/or `PredictsText`
(`text="..."`), see `common.capabilities`.
"""

from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from common.capabilities import PredictsFile, PredictsText, require
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
    cfg: DictConfig, ckpt_path: str, capability: type, doing: str
) -> L.LightningModule:
    """The model of `ckpt_path` in eval mode on `cfg.device`, weights and data spec loaded; it
    must have `capability` (`doing` says what for, in the error)."""
    checkpoint = load_checkpoint(ckpt_path)
    model = instantiate_model(saved_config(cfg, checkpoint, ckpt_path).model)
    require(model, capability, cfg.name, doing)
    model.load_state_dict(checkpoint["state_dict"])
    model.on_load_checkpoint(checkpoint)  # what the model keeps beside its weights: its data spec
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    return model.to("cpu" if device == "auto" else device).eval()


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
    with torch.inference_mode():
        if text is not None:
            model = load_trained(cfg, ckpt_path, PredictsText, 'predict from text="..."')
            result = model.predict_text(str(text))
        else:
            model = load_trained(cfg, ckpt_path, PredictsFile, "predict from input=<file>")
            output = Path(str(cfg.output)).expanduser() if cfg.get("output") else None
            result = model.predict_file(path, output)
    print(result)
    return result


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    register_resolvers()
    main()
