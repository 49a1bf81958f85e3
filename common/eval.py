"""Evaluate a checkpoint on a project's test set: `python -m common.eval project=mnist ckpt_path=...`.

The model and its data are rebuilt from the config stored in the checkpoint, so training
overrides such as `model.net.width=64` or `seed=1` (which sets the splits, and a text project's
tokenizer) need not be repeated. `data.<key>=` overrides still apply and `data=<name>` tests on
other data; `model.<key>=` overrides apply when the weights still fit (test-time options), and are
refused when they do not. Trainer and loggers come from this command line.
"""

import warnings

from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from common import console, signals
from common.callbacks import RunNotes
from common.compress import int8_method
from common.entry import entry
from common.errors import UserError
from common.instantiate import (
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_model,
    instantiate_trainer,
    print_config_tree,
)
from common.runs import (
    checkpoint_data,
    checkpoint_datamodule,
    checkpoint_model,
    load_checkpoint,
    load_weights,
    resolve_ckpt_path,
    save_run_files,
    saved_config,
)


def describe_data(data: DictConfig, from_checkpoint: bool) -> str:
    """One line: which data a test runs on, and whose config chose it."""
    settings = {
        k: data[k]
        for k in ("synthetic", "data_dir", "root", "path", "test_path", "seed")
        if data.get(k) not in (None, False)
    }
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    whose = "the checkpoint's data config" if from_checkpoint else "this command's data config"
    return f"testing on {data._target_.rsplit('.', 1)[-1]}({shown}): {whose}"


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint `cfg.ckpt_path`; return the test metrics."""
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path is None:
        raise UserError("eval needs a checkpoint: ckpt_path=<file>, or ckpt_path=last")
    checkpoint = load_checkpoint(ckpt_path)
    saved = saved_config(cfg, checkpoint, ckpt_path)
    data = checkpoint_data(cfg, saved)
    model_cfg, changed = checkpoint_model(cfg, saved)
    from_checkpoint = data is not cfg.data
    cfg.data, cfg.model = data, model_cfg  # so the run's config.yaml says what was tested
    compressed = "compression" in checkpoint  # written by make compress
    if int8_method(checkpoint):
        cfg.trainer.accelerator, cfg.trainer.devices = "cpu", 1  # torch's int8 kernels: CPU ones
    if cfg.get("print_config"):
        print_config_tree(cfg)
    save_run_files(cfg, cfg.paths.output_dir)

    datamodule = checkpoint_datamodule(cfg.data, checkpoint)
    model = instantiate_model(cfg.model)
    load_weights(model, checkpoint, changed)  # refuses overrides the weights no longer fit
    if changed:
        rank_zero_info(f"applied to the checkpoint's model: {', '.join(changed)}")
    rank_zero_info(describe_data(cfg.data, from_checkpoint))
    callbacks = [*instantiate_callbacks(cfg), RunNotes()]
    trainer = instantiate_trainer(cfg, callbacks=callbacks, logger=instantiate_loggers(cfg))
    signals.watch(trainer)
    # Testing needs none of the callbacks that wrote the checkpoint; Lightning asks for them.
    warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need")
    # A compressed checkpoint's weights fit only the rebuilt model, which has them already.
    tested = None if compressed else ckpt_path
    trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    console.record(f"metrics: {metrics}")
    rank_zero_info(f"run directory: {cfg.paths.output_dir}")
    return metrics


@entry("eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
