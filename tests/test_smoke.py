"""Tier 2 (smoke): every project (and experiment) runs fast_dev_run through the real train function."""

import pytest

from common.checks import check_types
from common.train import train
from tests.conftest import PROJECTS, offline, options

# Keep the heaviest nets small on CPU: fast_dev_run checks that everything connects, not speed.
SMALLER = {
    "vit_finetune": ["model.net.image_size=32"],
    "kws": ["data.synthetic_size=[256,64]"],  # synthetic speech costs 2 ms a clip to make
    "dqn": ["model.learning_starts=0"],  # learn from the one rollout fast_dev_run collects
}
# ViT-B/16 (86M parameters) takes ~11 s even so: `make test-all` runs it; its net is unit-tested
# in test_vit_nets.py and its config instantiated in test_configs.py.
SLOW = {"vit_finetune"}


@pytest.mark.parametrize("project", PROJECTS)
def test_fast_dev_run(config, project):
    cfg = offline(config(f"project={project}", "debug=fdr", *SMALLER.get(project, [])))
    if "batch_size" in cfg.data:  # a graph trained full batch has none
        cfg.data.batch_size = 32
    metrics = train(cfg)
    assert any(k.startswith("train/loss") for k in metrics)  # a GAN has train/loss_d, _g
    assert any(k.startswith("test/") for k in metrics)
    assert metrics["train/samples_per_sec"] > 0  # the Throughput callback of callbacks=default


@pytest.mark.parametrize(
    "experiment",
    [pytest.param(e, marks=pytest.mark.slow) if e in SLOW else e for e in options("experiment")],
)
def test_experiment_fast_dev_run(config, experiment, tiny_fid):
    project = next(p for p in PROJECTS if experiment.startswith(p))
    overrides = ["debug=fdr", "data.batch_size=32", *SMALLER.get(experiment, [])]
    cfg = offline(config(f"project={project}", f"experiment={experiment}", *overrides))
    assert any(key.startswith("train/loss") for key in train(cfg))


@pytest.mark.parametrize("encoder", options("encoder"))
def test_encoder_option(config, encoder):
    cfg = config("project=sentiment", f"encoder={encoder}", "debug=fdr")
    check_types(cfg)  # what `make train` checks before any work
    assert "test/f1" in train(cfg)


@pytest.mark.parametrize(
    "choice",
    [
        f"model/{group}={o}"
        for group in ("optimizer", "scheduler")
        for o in options(f"model/{group}")
    ],
)
def test_optimizer_and_scheduler_options(config, choice):
    cfg = config("project=mnist", choice, "debug=fdr", "data.synthetic=true")
    check_types(cfg)
    assert "train/loss" in train(cfg)


@pytest.mark.slow  # inductor compiles forward and backward: ~20 s even for a 1-block ViT
def test_a_compiled_vit_trains_and_saves_plain_weights(config, tmp_path):
    import torch

    small = ["model.net.embed_dim=32", "model.net.depth=1", "model.net.num_heads=2"]
    cfg = offline(config("project=vit", "model.compile=true", "debug=fdr", *small))
    cfg.data.batch_size = 16
    cfg.trainer.fast_dev_run = False  # fast_dev_run saves no checkpoint
    cfg.trainer.max_steps, cfg.trainer.limit_val_batches, cfg.trainer.limit_test_batches = 2, 1, 1
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # earlier tests' compiles count too
    assert "test/acc" in train(cfg)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    (ckpt,) = tmp_path.rglob("last.ckpt")
    keys = torch.load(ckpt, weights_only=True)["state_dict"]
    assert "net.head.weight" in keys and not any("_orig_mod" in k for k in keys)
