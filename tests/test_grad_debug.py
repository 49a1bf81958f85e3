"""`debug=grad` (common/callbacks/grad_debug.py): what it logs, where it stops, what it flags,
on tiny modules whose faults are planted, and on every project's recipe."""

import sys

import lightning as L
import pytest
import torch
from torch import nn

from common.callbacks.grad_debug import GradientDebugger, first_float_tensor
from common.errors import UserError
from common.train import train
from tests.conftest import PROJECTS, offline, run
from tests.test_smoke import SMALLER  # dqn learns from its first rollout, kws on fewer clips

# fast_dev_run of every project with the debugger on: a few seconds each, so most are slow.
QUICK = {"gan"}  # two optimizers stepped by hand


class Tiny(L.LightningModule):
    """y = head(relu(body(x))) on random data; `fault` plants one problem."""

    def __init__(self, fault: str | None = None):
        super().__init__()
        self.body, self.act, self.head = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)
        self.unused = nn.Linear(3, 3)  # in no loss: no gradient ever reaches it
        self.fault = fault

    def forward(self, x):
        if self.fault == "nan input":
            x = x.clone()
            x[0, 0] = float("nan")
        return self.head(self.act(self.body(x)))

    def training_step(self, batch, batch_idx):
        if self.fault == "inf weights" and self.global_step == 2:
            with torch.no_grad():
                self.body.weight[0, 0] = float("inf")
        x, y = batch
        out = self(x)
        if self.fault == "sqrt at 0":  # finite forward, NaN backward: d sqrt(u)/du at u = 0
            return (out - y).pow(2).mean() + torch.sqrt((out - out.detach()).abs()).sum()
        if self.fault == "nan loss at batch 0" and batch_idx == 0:
            return (out - y).pow(2).mean() * float("nan")
        return (out - y).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=gen)
        data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
        return torch.utils.data.DataLoader(data, batch_size=8)


def fit(tmp_path, model, trainer_args=None, **kwargs) -> GradientDebugger:
    debugger = GradientDebugger(every_n_steps=2, figure=str(tmp_path / "grad.png"), **kwargs)
    trainer = L.Trainer(
        **(trainer_args or {}),
        max_epochs=1,
        callbacks=[debugger],
        logger=L.pytorch.loggers.TensorBoardLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model)
    return debugger


def test_logs_norms_ratios_and_activations_and_names_the_dead(tmp_path, caplog):
    model = Tiny()
    before = torch.linalg.vector_norm(model.head.weight).item()
    debugger = fit(tmp_path, model)
    history = debugger.history
    steps = [s for s, _ in history["grad_norm/body.weight"]]
    assert steps == [0, 2, 4, 6]  # every 2nd of 8 steps
    for tag in (
        "update_ratio/body.weight",
        "update_ratio/head.bias",
        "act_std/body",
        "act_std/act",
    ):
        assert len(history[tag]) == 4 and all(v > 0 for _, v in history[tag])
    # A step's size by hand: lr * |grad| / |w| for SGD without momentum.
    (_, ratio), (_, norm) = (
        history["update_ratio/head.weight"][0],
        history["grad_norm/head.weight"][0],
    )
    assert ratio == pytest.approx(0.01 * norm / before, rel=1e-4)
    assert "act_std/unused" not in history  # a layer that never ran
    assert (tmp_path / "grad.png").stat().st_size > 10_000
    assert "dead (no nonzero gradient in 8 steps): unused.weight, unused.bias" in caplog.text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = tmp_path.glob("lightning_logs/version_0/events*")
    tags = EventAccumulator(str(events)).Reload().Tags()
    assert "grad_norm/body.weight" in tags["scalars"] and "act/body" in tags["histograms"]


@pytest.mark.parametrize(
    "fault, says",
    [
        (
            "nan input",
            "the output of body (Linear) is the first to hold NaN/Inf, and so was its "
            "input: the batch holds NaN/Inf",
        ),
        (
            "inf weights",
            "the output of body (Linear) is the first to hold NaN/Inf, because its weights are",
        ),
        (
            "sqrt at 0",
            "the gradient of head.bias, in layer head (Linear), holds NaN/Inf (and 3 other "
            "parameters) while the loss and every layer's output were finite",
        ),
    ],
)
def test_stops_at_the_first_nan_naming_the_layer(tmp_path, fault, says):
    with pytest.raises(UserError, match="debug=grad: step") as err:
        fit(tmp_path, Tiny(fault))
    assert says in str(err.value)


def test_under_accumulation_a_nan_loss_of_an_earlier_batch_is_named(tmp_path):
    with pytest.raises(UserError, match="step 0: the loss is nan while every layer's output"):
        fit(tmp_path, Tiny("nan loss at batch 0"), {"accumulate_grad_batches": 2})


def test_frozen_parameters_are_not_called_dead(tmp_path, caplog):
    model = Tiny()
    model.unused.requires_grad_(False)
    debugger = fit(tmp_path, model)
    assert "unused.weight" not in debugger.names.values() and "dead" not in caplog.text


class SeveralStepsPerBatch(Tiny):
    """Manual optimization, three optimizer steps per batch (as PPO's epochs over a rollout)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        for _ in range(3):
            optimizer.zero_grad()
            self.manual_backward((self(batch[0]) - batch[1]).pow(2).mean())
            optimizer.step()


def test_every_nth_optimizer_step_is_logged_when_a_batch_takes_several(tmp_path):
    history = fit(tmp_path, SeveralStepsPerBatch()).history
    assert [s for s, _ in history["grad_norm/body.weight"]] == list(range(0, 24, 2))
    # Each ratio is resolved before the next step changes the weights again.
    assert [s for s, _ in history["update_ratio/body.weight"]] == list(range(0, 24, 2))


def test_histograms_are_of_the_layer_not_of_an_in_place_op_after_it(tmp_path):
    model = Tiny()
    model.act = nn.ReLU(inplace=True)  # rewrites body's output in place
    debugger = fit(tmp_path, model)
    (_, zeros), *_ = debugger.history["act_zeros/body"]
    assert zeros == 0  # a Linear's output is never exactly 0 here
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = tmp_path.glob("lightning_logs/version_0/events*")
    (first, *_) = EventAccumulator(str(events)).Reload().Histograms("act/body")
    assert first.histogram_value.min < 0  # the ReLU's zeros did not overwrite it


def test_nothing_stops_when_told_not_to(tmp_path):
    fit(tmp_path, Tiny("sqrt at 0"), stop_on_nonfinite=False)


def test_first_float_tensor_finds_the_output_of_an_lstm():
    lstm = nn.LSTM(3, 5, batch_first=True)
    out = lstm(torch.randn(2, 4, 3))
    assert first_float_tensor(out).shape == (2, 4, 5)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 4, 3), [4, 2], batch_first=True)
    assert first_float_tensor(lstm(packed)).shape == (6, 5)
    assert first_float_tensor((torch.tensor([1, 2]), {"a": torch.ones(2)})).dtype == torch.float32


def test_a_too_high_learning_rate_stops_linear_regression_with_one_line(config):
    cfg = config("project=linreg", "debug=grad", "model.optimizer.lr=5", "trainer.max_epochs=2")
    with pytest.raises(UserError, match="the loss is inf while every layer's output was finite"):
        train(cfg)


@pytest.fixture
def debuggers(monkeypatch):
    made = []
    start = GradientDebugger.on_fit_start

    def record(self, trainer, pl_module):
        made.append(self)
        start(self, trainer, pl_module)

    monkeypatch.setattr(GradientDebugger, "on_fit_start", record)
    return made


@pytest.mark.parametrize(
    "project", [p if p in QUICK else pytest.param(p, marks=pytest.mark.slow) for p in PROJECTS]
)
def test_debug_grad_on_every_project(config, debuggers, tiny_fid, project):
    overrides = ["debug=grad", "trainer.fast_dev_run=true", *SMALLER.get(project, [])]
    cfg = offline(config(f"project={project}", *overrides))
    cfg.callbacks.grad_debug.every_n_steps = 1
    if "batch_size" in cfg.data:
        cfg.data.batch_size = 16
    train(cfg)
    (debugger,) = debuggers
    norms = {tag for tag in debugger.history if tag.startswith("grad_norm/")}
    assert norms and len(norms) == len(debugger.alive)  # every parameter that got a gradient
    assert any(tag.startswith("update_ratio/") for tag in debugger.history)
    assert any(tag.startswith("act_std/") for tag in debugger.history)
    assert not debugger.hooks  # removed at the end


@pytest.mark.slow
def test_every_ddp_process_stops_at_the_same_step(tmp_path):
    result = run(
        sys.executable,
        "-m",
        "common.train",
        "project=linreg",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "debug=grad",
        "model.optimizer.lr=5",
        "logger=csv",
        f"paths.log_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}/run",
    )
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert result.returncode != 0 and errors, result.stderr[-2000:]
    assert all("debug=grad: step 20: the loss is inf" in line for line in errors), errors
