"""Train a project: `python -m common.train project=mnist trainer.max_epochs=5` (or `make train`).

Seed, build data, model, callbacks, loggers and trainer from the config, fit, test the best
checkpoint, and return the monitored score so Hydra sweepers can optimize it.
"""

import json
import os
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from common import console, signals
from common.callbacks import ConfigInCheckpoint, RunNotes, StopOnSignal
from common.data import DataSpec
from common.entry import entry
from common.errors import UserError
from common.instantiate import (
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_model,
    instantiate_trainer,
    print_config_tree,
    settle_precision,
)
from common.runs import (
    load_checkpoint,
    resolve_ckpt_path,
    save_run_files,
    saved_config,
)


def check_sweep_strategy(cfg: DictConfig) -> None:
    """Refuse a local sweep (-m) with strategy=ddp.

    Lightning's ddp re-runs this script, with its command line, once per extra device: under -m
    every rank would run the whole sweep itself (and with a random sampler, train different
    points) with no error. ddp_spawn starts its processes inside the job instead, and a cluster
    launcher (hydra/launcher=slurm) gives each point its own job, where Lightning relaunches
    nothing: both are safe.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    strategy = str(cfg.trainer.get("strategy", ""))
    launcher = HydraConfig.get().runtime.choices.get("hydra/launcher", "basic")
    if strategy.startswith("ddp") and not strategy.startswith("ddp_spawn") and launcher == "basic":
        raise UserError(
            f"a local sweep (-m) cannot use trainer.strategy={strategy}: every process would run "
            "the sweep itself. Use trainer=ddp_spawn, or hydra/launcher=slurm (one job per point)."
        )


def set_threads(threads) -> None:
    """`threads=<n>`: torch's intra-op threads for this process and the DDP processes it
    starts (Lightning's launchers set cores / processes unless OMP_NUM_THREADS is set); null
    or 0 keeps torch's default, one per core."""
    if threads is None or threads == 0:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise UserError(f"threads={threads!r}: give a number of threads, or null for one per core")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one run; return its final metrics plus `score`, the best monitored value."""
    if not (cfg.get("train") or cfg.get("test")):
        raise UserError("train=false and test=false leaves nothing to do")
    if not cfg.get("train") and not cfg.get("ckpt_path"):
        raise UserError("train=false tests a checkpoint: give ckpt_path=<file> or ckpt_path=last")
    which = cfg.get("test_ckpt", "best")
    if which not in ("best", "last"):
        raise UserError(f"test_ckpt={which!r} is not one of best, last")
    check_sweep_strategy(cfg)
    set_threads(cfg.get("threads"))
    settle_precision(cfg)  # before the config is saved: it says what ran
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("print_config"):
        print_config_tree(cfg)
    run_dir = cfg.paths.output_dir
    ckpt_path = resolve_ckpt_path(cfg, own_dir=run_dir)
    # A missing, corrupt or foreign file: one message, before any work.
    saved_spec = None
    if ckpt_path:
        resumed = load_checkpoint(ckpt_path)
        saved_config(cfg, resumed, ckpt_path)  # refuses another project's checkpoint
        if "compression" in resumed:
            raise UserError(
                f"{ckpt_path} was written by make compress ({resumed['compression']['method']}): "
                "it is for make eval, predict and serve; train from the checkpoint it came from"
            )
        saved_spec = resumed.get("data_spec")
    save_run_files(cfg, run_dir)

    datamodule = instantiate(cfg.data)
    if saved_spec is not None:  # resuming: the checkpoint's tokenizer, its normalization
        datamodule.adopt(DataSpec.from_dict(saved_spec))
    model = instantiate_model(cfg.model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [
        *instantiate_callbacks(cfg),
        ConfigInCheckpoint(resolved),
        StopOnSignal(run_dir),
        RunNotes(),
    ]
    loggers = instantiate_loggers(cfg)
    trainer = instantiate_trainer(cfg, callbacks=callbacks, logger=loggers)
    signals.watch(trainer)
    for logger in loggers:
        logger.log_hyperparams(resolved)

    metrics: dict[str, float] = {}
    if cfg.get("train"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    score = checkpoint.best_model_score if checkpoint is not None else None
    metrics["score"] = float(score) if score is not None else metrics.get(cfg.monitor, float("nan"))

    if cfg.get("test"):
        if not cfg.get("train"):
            tested = ckpt_path  # a test-only run of the given checkpoint
        elif which == "best" and best:
            tested = best
        else:
            if which == "best" and not trainer.fast_dev_run:
                rank_zero_warn("no best checkpoint was saved: testing the weights as they are now")
            tested = None  # the weights in memory, as fitting left them
        trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    console.record(f"metrics: {metrics}")
    if trainer.is_global_zero:  # what a sweep's summary reads (common/sweeps.py)
        Path(run_dir, "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    rank_zero_info(f"run directory: {run_dir}")
    return metrics


@entry("train")
def main(cfg: DictConfig) -> float:
    return train(cfg)["score"]


if __name__ == "__main__":
    main()
