"""Tier 3 (learning): models learn on synthetic data, and known answers come out right."""

import csv
import math
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from common.module import warmup_cosine
from common.train import train
from projects.linreg.baseline import least_squares, r2_score
from tests.helpers import RecordLosses


def test_least_squares_recovers_noise_free_weights():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen)
    w, b = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0]), 0.7
    w_hat, b_hat = least_squares(x, x @ w + b)
    assert torch.allclose(w_hat, w, atol=1e-5)
    assert b_hat == pytest.approx(b, abs=1e-5)


def test_r2_is_one_for_a_perfect_prediction_and_zero_for_the_mean():
    y = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(torch.full_like(y, y.mean()), y) == pytest.approx(0.0)


def test_warmup_cosine_schedule_values():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = warmup_cosine(opt, total_steps=110, warmup_fraction=10 / 110)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)  # (0 + 1) / 10 warmup steps
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] < 0.001


def test_linreg_recovers_the_true_weights(config):
    cfg = config("project=linreg", "trainer.max_epochs=8", "logger=csv")
    metrics = train(cfg)
    assert metrics["test/weight_error"] < 0.03  # max |w_learned - w_true| over 8 weights
    assert metrics["test/weight_gap"] < 0.03  # and it is the least-squares answer
    assert metrics["test/r2"] > 0.99
    assert metrics["test/r2"] == pytest.approx(metrics["test/r2_closed_form"], abs=0.002)


def test_linreg_on_diabetes_matches_least_squares(config):
    cfg = config("project=linreg", "experiment=linreg_diabetes", "logger=csv")
    metrics = train(cfg)
    assert metrics["test/r2"] == pytest.approx(metrics["test/r2_closed_form"], abs=0.02)
    assert metrics["test/r2"] > 0.3  # a linear model explains about half the variance


def test_mnist_cnn_learns_synthetic_digits(config):
    cfg = config(
        "project=mnist",
        "data.synthetic=true",
        "trainer.max_epochs=1",
        "trainer.max_steps=150",
        "trainer.limit_val_batches=2",
        "data.synthetic_size=[20000,1000]",
        "logger=csv",
    )
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.9  # chance is 0.1


def test_step_metrics_are_logged_on_the_steps_the_loggers_write(config):
    """`logs_this_step` skips `self.log` (~1 ms of host time a call) on the steps Lightning would
    not write: the logged file must hold the rows, and values, of every step logging."""
    cfg = config(
        "project=mnist",
        "data.synthetic=true",
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=10",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=3",
        "test=false",
    )
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": "tests.helpers.RecordLosses"}
    RecordLosses.losses.clear()
    train(cfg)
    (metrics,) = Path(cfg.paths.output_dir).rglob("metrics.csv")
    logged = {
        int(r["step"]): float(r["train/loss"])
        for r in csv.DictReader(metrics.open())
        if r.get("train/loss")
    }
    assert list(logged) == [2, 5, 8]
    for step, value in logged.items():  # that step's own loss, not an older one left over
        assert value == pytest.approx(RecordLosses.losses[step], rel=1e-6)


def test_manual_optimization_logs_on_the_batches_the_loggers_write(config):
    """The GAN takes two optimizer steps a batch; Lightning's loggers count the batch once. A
    run writing every 3rd batch must hold exactly those rows of a run that writes every one."""

    def logged(every: int) -> dict[int, float]:
        cfg = config(
            "project=gan",
            "data.synthetic=true",
            "logger=csv",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=7",
            "trainer.limit_val_batches=1",
            f"trainer.log_every_n_steps={every}",
            "test=false",
            "data.batch_size=16",
        )
        train(cfg)
        (metrics,) = Path(cfg.paths.output_dir).rglob("metrics.csv")
        rows = csv.DictReader(metrics.open())
        return {int(r["step"]): float(r["train/loss_d"]) for r in rows if r.get("train/loss_d")}

    every_batch, every_third = logged(1), logged(3)
    assert list(every_third) == [2, 5]
    assert all(every_third[s] == every_batch[s] for s in every_third)  # the same seed, same run
