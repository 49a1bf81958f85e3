"""Run a trained model on your input: `make predict PROJECT=<name> ckpt_path=... input=...|text=...`.

The model is rebuilt from the config stored in the checkpoint and loaded with torch's safe
`weights_only` loader; what it knows of its data (image size, normalization, class names, its
tokenizer) comes with the checkpoint too, so no data is needed. What "predict" means is the
project's: its model has the `PredictsFile` capability (`input=<file>`) and/or `PredictsText`
(`text="..."`), see `common.capabilities`.

A file is written only where it harms nothing (`check_output`): never over the input, over an
existing file only with overwrite=true, and only into a folder that exists.
"""

import os
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from common.capabilities import PredictsFile, PredictsText, require
from common.entry import entry
from common.errors import UserError
from common.instantiate import instantiate_model
from common.runs import (
    checkpoint_model,
    load_checkpoint,
    load_weights,
    resolve_ckpt_path,
    saved_config,
)


def checkpoint_path(cfg: DictConfig) -> str:
    """The checkpoint file `ckpt_path` names (`last`: the project's newest last.ckpt)."""
    path = resolve_ckpt_path(cfg)
    if path is None:
        raise UserError("this needs a checkpoint: ckpt_path=<file>, or ckpt_path=last")
    return path


def output_beside(cfg: DictConfig, ckpt_path: Path, name: str, suffix: str) -> Path:
    """The file a verb writes from a checkpoint: `cfg.output`, or `name` beside the checkpoint;
    a UserError unless it ends in `suffix` and may be written (`check_output`)."""
    path = Path(str(cfg.output)).expanduser() if cfg.get("output") else ckpt_path.with_name(name)
    if path.suffix.lower() != suffix:
        raise UserError(f"output={path} must end in {suffix}")
    check_output(path, cfg.overwrite, reading=ckpt_path)
    return path


def check_output(output: Path, overwrite: bool, reading: Path | None = None) -> None:
    """A UserError unless `output` may be written: not the file being read (`reading`, through
    any symlink), not an existing file unless `overwrite`, in a folder that exists and can be
    written (none is made: a misspelled folder would hide the result)."""
    if not isinstance(overwrite, bool):  # overwrite=yes would otherwise count as true
        raise UserError(f"overwrite={overwrite} must be true or false")
    if output.is_dir():
        raise UserError(f"{output} is a folder: output=<file> names the file to write")
    if reading is not None and output.exists() and output.samefile(reading):
        raise UserError(f"{output} is the file being read: name another output=<file>")
    if output.exists() and not overwrite:
        raise UserError(
            f"{output} exists: overwrite=true replaces it, or name another output=<file>"
        )
    if not output.parent.is_dir():
        raise UserError(f"the folder {output.parent} does not exist (for {output}): make it first")
    if not os.access(output.parent, os.W_OK):
        raise UserError(f"cannot write in the folder {output.parent} (for {output})")


def load_trained(
    cfg: DictConfig, ckpt_path: str, capability: type, doing: str
) -> L.LightningModule:
    """The model of `ckpt_path` in eval mode on `cfg.device`, weights and data spec loaded; it
    must have `capability` (`doing` says what for, in the error). `model.<key>=` overrides apply
    when the weights still fit them (inference-time options), and are refused otherwise."""
    checkpoint = load_checkpoint(ckpt_path)
    model_cfg, changed = checkpoint_model(cfg, saved_config(cfg, checkpoint, ckpt_path))
    model = instantiate_model(model_cfg)
    require(model, capability, cfg.name, doing)
    load_weights(model, checkpoint, changed)
    model.on_load_checkpoint(checkpoint)  # what the model keeps beside its weights: its data spec
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    from common.compress import int8_method  # (it imports this module)

    if int8_method(checkpoint):
        device = "cpu"  # torch's int8 kernels are CPU kernels
    return model.to("cpu" if device == "auto" else device).eval()


def predict(cfg: DictConfig) -> str:
    """Predict on `cfg.input` (a file) or `cfg.text` with the checkpoint `cfg.ckpt_path`; return
    what was printed."""
    text, file = cfg.get("text"), cfg.get("input")
    if (text is None) == (file is None):
        raise UserError('predict needs one of input=<file> or text="..."')
    if text is not None and not str(text).strip():
        raise UserError('text= is empty: give the text to classify, text="..."')
    path = Path(str(file)).expanduser() if file is not None else None
    if path is not None and not path.is_file():
        raise UserError(f"input={file}: no such file")
    output = Path(str(cfg.output)).expanduser() if cfg.get("output") else None
    if output is not None:  # checked before the model loads: the cheap mistakes first
        if text is not None:
            raise UserError('output= is for input=<file>; a prediction from text="..." is printed')
        check_output(output, cfg.overwrite, reading=path)
    ckpt_path = checkpoint_path(cfg)
    with torch.inference_mode():
        if text is not None:
            model = load_trained(cfg, ckpt_path, PredictsText, 'predict from text="..."')
            result = model.predict_text(str(text))
        else:
            model = load_trained(cfg, ckpt_path, PredictsFile, "predict from input=<file>")
            target = model.output_path(path, output)  # the project's own name when None
            if target not in (None, output):
                check_output(target, cfg.overwrite, reading=path)
            result = model.predict_file(path, target)
    print(result)
    return result


@entry("predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
