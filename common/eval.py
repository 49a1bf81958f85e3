"""Evaluate a checkpoint on a project's test set: `python -m common.eval project=mnist ckpt_path=...`.

The model and its data are rebuilt from the config stored in the checkpoint, so training
overrides such as `model.net.width=64` or `seed=1` (which sets the splits, and a text project's
tokenizer) need not be repeated; `data.<key>=` overrides still apply, and `data=<name>` tests on
other data. Trainer and loggers come from this command line.
"""

import hydra
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from common.data import DataSpec
from common.errors import UserError, exit_on_user_error
from common.instantiate import (
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_model,
    instantiate_trainer,
    print_config_tree,
)
from common.resolvers import register_resolvers
from common.runs import (
    checkpoint_data,
    load_checkpoint,
    resolve_ckpt_path,
    save_run_files,
    saved_config,
)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint `cfg.ckpt_path`; return the test metrics."""
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path is None:
        raise UserError("eval needs a checkpoint: ckpt_path=<file>, or ckpt_path=last")
    checkpoint = load_checkpoint(ckpt_path)
    saved = saved_config(cfg, checkpoint, ckpt_path)
    cfg.data = checkpoint_data(cfg, saved)  # so the run's config.yaml says what was tested
    if cfg.get("print_config"):
        print_config_tree(cfg)
    save_run_files(cfg, cfg.paths.output_dir)

    datamodule = instantiate(cfg.data)
    if "data_spec" in checkpoint:  # its tokenizer, its normalization
        datamodule.adopt(DataSpec.from_dict(checkpoint["data_spec"]))
    model = instantiate_model(saved.model)
    trainer = instantiate_trainer(
        cfg, callbacks=instantiate_callbacks(cfg), logger=instantiate_loggers(cfg)
    )
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    rank_zero_info(f"run directory: {cfg.paths.output_dir}")
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    register_resolvers()
    main()
