"""Tier 4 (process): what a careless or hostile user does to the commands (issue 13's cases),
each ending in one readable `error:` line or the documented behaviour, never a traceback or a
silent success. Elsewhere: predict's outputs, huge images and empty text in test_predict.py; the
no-run-directory rule in test_process.py (a refused checkpoint) and below (a bad value).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from common.errors import UserError
from common.eval import evaluate
from common.runs import LOCK, find_last_checkpoint, resolve_ckpt_path
from common.train import train
from tests.conftest import ROOT
from tests.test_process import assert_one_readable_error, make, make_ddp_linreg, user_env

PY = sys.executable


def python(tmp_path, *args, timeout=300):
    return subprocess.run(
        [PY, "-m", *args],
        cwd=ROOT,
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def no_run_files(tmp_path) -> bool:
    """No launch left a run directory (a run's config.yaml or log) under tmp_path/logs."""
    logs = tmp_path / "logs"
    return not any(logs.rglob("*.yaml")) and not any(logs.rglob("*.log"))


def run_dirs(tmp_path, project):
    root = tmp_path / "logs" / project
    return (
        sorted(p for p in root.iterdir() if p.is_dir() and p.name != "eval")
        if root.exists()
        else []
    )


@pytest.fixture
def said(caplog):
    """What the run said on the console through Lightning's logger (which does not propagate to
    the root logger pytest listens on): call it for the text so far."""
    import logging

    upstream = logging.getLogger("lightning.pytorch")
    caplog.set_level(logging.INFO)
    upstream.addHandler(caplog.handler)
    yield lambda: caplog.text
    upstream.removeHandler(caplog.handler)


@pytest.fixture(scope="module")
def linreg_ckpt(tmp_path_factory):
    """A checkpoint of a 1-epoch linreg run, trained once for the tests that damage copies."""
    from tests.conftest import train_once

    tmp = tmp_path_factory.mktemp("linreg")
    return train_once(tmp, ["project=linreg", "trainer.max_epochs=1", "logger=csv"])


# --- 1. signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGTERM,
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
        pytest.param(signal.SIGUSR1, marks=pytest.mark.slow),
    ],
)
def test_a_signal_saves_a_resumable_checkpoint_and_exits_128_plus_signal(tmp_path, signum):
    result = python(
        tmp_path,
        "common.train",
        "project=linreg",
        "trainer.max_epochs=3",
        "+callbacks.signal._target_=tests.helpers.SignalAt",
        f"+callbacks.signal.signum={int(signum)}",
        "+callbacks.signal.step=70",  # mid-way through epoch 1 (51 steps an epoch)
    )
    assert result.returncode == 128 + signum, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    (run_dir,) = run_dirs(tmp_path, "linreg")
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 70 and state["epoch"] == 1  # mid-epoch, not the epoch's end
    assert not (run_dir / LOCK).exists()
    command = re.search(r"resume with: (make train .*)", result.stdout + result.stderr).group(1)
    assert f"hydra.run.dir={run_dir}" in command and command.endswith("ckpt_path=last")

    # The printed command, with the signal taken out, finishes the run where it stopped.
    words = [w for w in command.split()[2:] if "callbacks.signal" not in w]
    resumed = make(tmp_path, "train", *words)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "this run directory's" in resumed.stderr + resumed.stdout
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == 3 * 51 and final["epoch"] == 2
    assert run_dirs(tmp_path, "linreg") == [run_dir]  # one run, resumed in place

    # train.log holds both launches' console lines (ours and Lightning's), not upstream noise.
    log = (run_dir / "train.log").read_text()
    said = (
        "Seed set to 42",
        "epoch 0:",
        "stopped by",
        "this run directory's",
        "test/r2",
        "run directory:",
    )
    for line in said:
        assert line in log, line
    console = result.stdout + result.stderr + resumed.stdout + resumed.stderr
    for noise in ("💡 Tip", "LeafSpec", "TPU available", "log_every_n_steps=50)"):
        assert noise not in console and noise not in log, noise


@pytest.mark.slow
def test_sigterm_to_rank_0_of_a_ddp_job_ends_every_rank_non_zero(tmp_path):
    start = time.monotonic()
    result = make_ddp_linreg(
        tmp_path,
        "trainer.max_epochs=5",
        "+callbacks.signal._target_=tests.helpers.SignalAt",
        "+callbacks.signal.step=10",
    )
    assert "Error 143" in result.stderr  # make's report of rank 0's exit code
    assert "stopped by SIGTERM at epoch 0, step 10" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (run_dir,) = run_dirs(tmp_path, "linreg")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert not (run_dir / LOCK).exists()
    assert not list(run_dir.glob("*process_1.log"))  # rank 1 writes no log of its own
    time.sleep(2)
    assert not alive(tmp_path), "a rank outlived the job"
    assert time.monotonic() - start < 120


@pytest.mark.slow
def test_ctrl_c_to_every_rank_of_a_ddp_job_stops_them_together(tmp_path):
    start = time.monotonic()
    job = subprocess.Popen(
        [PY, "-m", "common.train", "project=linreg", "trainer=ddp", "trainer.accelerator=cpu"]
        + ["trainer.devices=2", "trainer.max_epochs=5"]
        + ["+callbacks.signal._target_=tests.helpers.SignalAt", "+callbacks.signal.signum=2"]
        + ["+callbacks.signal.step=10", "+callbacks.signal.group=true"],
        cwd=ROOT,
        env=user_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the Ctrl+C reaches the job alone
    )
    output = job.communicate(timeout=180)[0]
    assert job.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "stopped by SIGINT" in output and "Traceback" not in output
    (run_dir,) = run_dirs(tmp_path, "linreg")
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] in (10, 11)  # the batch boundary rank 0 broadcast its stop at
    time.sleep(2)
    assert not alive(tmp_path), "a rank outlived the job"
    assert time.monotonic() - start < 120


def alive(tmp_path) -> list[str]:
    """Processes still running with this test's log folder in their environment or arguments."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    mine = []
    for line in out.splitlines()[1:]:
        pid = int(line.split()[0])
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if str(tmp_path / "logs").encode() in environ and "common.train" in line:
            mine.append(line)
    return mine


# --- 2. ckpt_path=last ---------------------------------------------------------------------------


def fake_run(root: Path, name: str, lock: dict | None = None, age: float = 0) -> Path:
    ckpt = root / name / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (time.time() - age, time.time() - age))
    if lock is not None:
        (root / name / LOCK).write_text(yaml.safe_dump(lock))
    return ckpt


def live_lock(run_dir: Path) -> dict:
    """A lock in `run_dir` naming this (live) process, as a run training there would leave."""
    import platform

    from common.runs import _process_start

    lock = {"pid": os.getpid(), "host": platform.node(), "start": _process_start(os.getpid())}
    (run_dir / LOCK).write_text(yaml.safe_dump(lock))
    return lock


def test_ckpt_path_last_skips_a_live_run_and_takes_a_stale_lock_for_stopped(tmp_path, said):
    import platform

    root = tmp_path / "logs" / "mnist"
    older = fake_run(root, "a", age=300)
    stale = fake_run(root, "b", {"pid": 2**22 + 7, "host": platform.node(), "start": "1"}, age=200)
    me = live_lock(fake_run(root, "c", age=0).parent.parent)  # newest, but still training: us
    assert find_last_checkpoint(str(tmp_path / "logs"), "mnist") == str(stale)
    assert f"skipping {root / 'c'}, still training (pid {os.getpid()}" in said()
    stale.parent.parent.joinpath(LOCK).write_text(yaml.safe_dump(me))
    assert find_last_checkpoint(str(tmp_path / "logs"), "mnist") == str(older)
    # A pid that now belongs to another process (its start time differs) is a stale lock.
    reused = {**me, "start": "12345"}
    stale.parent.parent.joinpath(LOCK).write_text(yaml.safe_dump(reused))
    assert find_last_checkpoint(str(tmp_path / "logs"), "mnist") == str(stale)


def test_ckpt_path_last_with_only_live_runs_says_so(tmp_path):
    live_lock(fake_run(tmp_path / "logs" / "mnist", "a").parent.parent)
    with pytest.raises(UserError, match="only runs still training"):
        find_last_checkpoint(str(tmp_path / "logs"), "mnist")


def test_ckpt_path_last_in_a_named_run_directory_resumes_that_directory(config, tmp_path):
    cfg = config("project=linreg")
    newer = fake_run(tmp_path / "logs" / "linreg", "other", age=0)
    own = fake_run(tmp_path / "logs" / "linreg", "named", age=500)
    cfg.ckpt_path = "last"
    assert resolve_ckpt_path(cfg, own_dir=str(own.parent.parent)) == str(own)
    assert resolve_ckpt_path(cfg, own_dir=str(tmp_path / "fresh")) == str(newer)


def guard_config(run_dir: Path, **keys):
    """The part of a train config the run-directory guard reads."""
    from omegaconf import OmegaConf

    hydra = {"output_subdir": ".hydra", "run": {"dir": str(run_dir)}}
    return OmegaConf.create({"hydra": hydra, "train": True, "ckpt_path": None, **keys})


def test_the_guard_refuses_a_folder_with_files_unless_the_launch_resumes_the_run_in_it(tmp_path):
    from common.runs import RunDirGuard, release_lock

    folder = tmp_path / "mine"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("my: own\n")
    with pytest.raises(UserError, match="already holds files"):
        RunDirGuard().check(guard_config(folder))
    with pytest.raises(UserError, match="already holds files"):  # nothing to resume yet
        RunDirGuard().check(guard_config(folder, ckpt_path="last"))
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(UserError, match="already holds files"):  # eval never writes into a run
        RunDirGuard().check(guard_config(folder, ckpt_path="last", train=None))
    RunDirGuard().check(guard_config(folder, ckpt_path="last"))  # resuming it: allowed
    assert yaml.safe_load((folder / LOCK).read_text())["pid"] == os.getpid()
    release_lock()
    assert not (folder / LOCK).exists()
    live_lock(folder)  # another launch training in it right now
    with pytest.raises(UserError, match="in use by a run that is still training"):
        RunDirGuard().check(guard_config(folder, ckpt_path="last"))


@pytest.mark.slow  # the guard's logic is tested in-process above; this is the command
def test_a_named_run_directory_holding_files_is_refused_unless_resumed(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my: own\n")
    result = python(tmp_path, "common.train", "project=linreg", f"hydra.run.dir={folder}")
    assert_one_readable_error(result, "already holds files (config.yaml)", "ckpt_path=last")
    assert (folder / "config.yaml").read_text() == "my: own\n"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


# --- 4. checkpoint integrity ---------------------------------------------------------------------


def flip_a_weight_byte(src: Path, dst: Path) -> None:
    """Copy `src` with one byte of a tensor's data changed; the zip stays valid (CRCs redone)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        damaged = False
        for item in zin.infolist():
            data = zin.read(item)
            if not damaged and re.search(r"/data/\d+$", item.filename) and len(data) >= 4:
                data = bytes([data[0] ^ 0x40]) + data[1:]
                damaged = True
            zout.writestr(item, data)
    assert damaged


def test_a_checkpoint_with_damaged_weights_is_refused(tmp_path, config, linreg_ckpt):
    last, _ = linreg_ckpt
    bad = tmp_path / "damaged.ckpt"
    flip_a_weight_byte(last, bad)
    torch.load(bad, weights_only=True)  # torch itself loads it without a word
    with pytest.raises(UserError, match=f"checkpoint {re.escape(str(bad))} is corrupt"):
        evaluate(config("project=linreg", f"ckpt_path={bad}", name="eval"))


def test_an_unsafe_checkpoint_is_refused_without_suggesting_weights_only_false(tmp_path, config):
    bad = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "payload": Path("x")}, bad)
    with pytest.raises(UserError, match="refused checkpoint .* unsafe") as caught:
        evaluate(config("project=linreg", f"ckpt_path={bad}", name="eval"))
    assert "weights_only=False" not in str(caught.value)


# --- 5. hardware and ranks -----------------------------------------------------------------------


def test_more_devices_than_gpus_is_refused_with_the_cpu_spelling(config):
    from common.checks import check_config

    if torch.cuda.device_count() >= 4:
        pytest.skip("this machine has 4 GPUs")
    with pytest.raises(UserError, match=r"trainer.devices=4 asks for 4 GPUs.*accelerator=cpu"):
        check_config(config("project=vit", "trainer.devices=4"))
    check_config(
        config("project=vit", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=4")
    )


@pytest.mark.slow
def test_missing_data_under_ddp_ends_every_rank_before_the_prompt(tmp_path):
    result = make(
        tmp_path,
        "train",
        "PROJECT=mnist",
        "data.download=false",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        timeout=180,
    )
    assert_one_readable_error(result, "MNIST files missing")
    time.sleep(1)
    assert not alive(tmp_path), "a rank outlived make"


# --- 6. one error line for each bad input --------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "trainer.max_epochs=abc",
            "trainer.max_epochs='abc' is not valid: lightning.pytorch.Trainer takes int or null",
        ),
        ("trainer.max_epochs=2.5", "trainer.max_epochs=2.5 is not valid"),
        ("model.optimizer.lr=fast", "model.optimizer.lr='fast' is not valid: torch.optim.SGD"),
        ("data.batch_size=1.5", "data.batch_size=1.5 is not valid"),
        ("trainer.precision=99", "trainer.precision=99 is not valid"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(config, override, message):
    from common.checks import check_config

    with pytest.raises(UserError, match=re.escape(message)):
        check_config(config("project=linreg", override))


@pytest.mark.parametrize("project", ["mnist", "detection"])
def test_no_validation_with_early_stopping_is_one_error(config, project):
    # Lightning ended the first epoch in a traceback ("metric val/map50 not available").
    from common.checks import check_config

    with pytest.raises(UserError, match="limit_val_batches=0 runs no validation.*val/"):
        check_config(config(f"project={project}", "trainer.limit_val_batches=0"))
    check_config(
        config(f"project={project}", "trainer.limit_val_batches=0", "callbacks.early_stopping=null")
    )


def test_the_valid_values_of_every_project_pass_the_check(config):
    from common.checks import check_config

    for project in (
        "linreg",
        "mnist",
        "cifar10",
        "detection",
        "sentiment",
        "vit",
        "gan",
        "vae",
        "ddp",
    ):
        check_config(config(f"project={project}"))


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "trainer.max_epoch=1",
            "trainer.max_epoch is not a config key; did you mean trainer.max_epochs?",
        ),
        ("projec=mnist", "projec is not a config key; did you mean project?"),
        ("model.optimizer.lrr=1", "did you mean model.optimizer.lr?"),
    ],
)
def test_a_misspelled_key_gets_the_nearest_name(override, message):
    from hydra import compose, initialize_config_dir

    from common.entry import config_message

    with (
        pytest.raises(Exception) as caught,
        initialize_config_dir(str(ROOT / "configs"), version_base="1.3"),
    ):
        compose("train", overrides=["project=linreg", override])
    assert message in config_message(caught.value)


def test_a_bad_value_is_one_error_line_and_leaves_no_run_directory(tmp_path):
    result = python(tmp_path, "common.train", "project=linreg", "trainer.max_epochs=abc")
    assert_one_readable_error(result, "error: trainer.max_epochs='abc' is not valid")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert no_run_files(tmp_path)


def test_resuming_another_projects_checkpoint_is_refused(config, linreg_ckpt):
    last, _ = linreg_ckpt
    with pytest.raises(UserError, match="trained by project 'linreg'"):
        train(config("project=mnist", f"ckpt_path={last}"))


def test_a_schedule_too_short_for_its_warmup_is_a_user_error(config):
    cfg = config("project=cifar10", "data.synthetic=true", "trainer.max_steps=4", "logger=csv")
    with pytest.raises(UserError, match="cannot run over 4 optimizer steps"):
        train(cfg)


@pytest.mark.parametrize("log_dir", ["file", "unwritable"])
def test_an_unusable_log_dir_is_refused_before_anything_is_written(tmp_path, log_dir):
    from common.runs import RunDirGuard

    path = tmp_path / "somewhere"
    if log_dir == "file":
        path.write_text("not a folder")
    else:
        path.mkdir()
        path.chmod(0o500)
        if os.access(path, os.W_OK):
            pytest.skip("running as root: every folder is writable")
    with pytest.raises(UserError, match="cannot write the run directory .* LOG_DIR"):
        RunDirGuard().check(guard_config(path / "linreg" / "run"))


# --- 10. eval's data and model options come from the checkpoint ---------------------------------


def test_eval_says_which_data_it_tests_and_refuses_model_overrides_that_change_the_weights(
    config, linreg_ckpt, said
):
    last, trained = linreg_ckpt
    evaluated = evaluate(config("project=linreg", f"ckpt_path={last}", "logger=csv", name="eval"))
    assert evaluated["test/r2"] == pytest.approx(trained["test/r2"], abs=1e-6)
    assert "testing on RegressionDataModule(" in said()
    assert "the checkpoint's data config" in said()
    with pytest.raises(UserError, match="model.net.in_features=4 changes the model"):
        evaluate(
            config("project=linreg", f"ckpt_path={last}", "model.net.in_features=4", name="eval")
        )


# --- 11. every Trainer argument, with Lightning's defaults --------------------------------------


def test_every_trainer_argument_is_a_key_with_lightnings_default_unless_a_comment_says_why():
    import inspect

    import lightning as L

    path = ROOT / "configs" / "trainer" / "default.yaml"
    config = yaml.safe_load(path.read_text())
    lines = path.read_text().splitlines()
    params = inspect.signature(L.Trainer.__init__).parameters
    ours = {"logger", "callbacks"}  # the logger= and callbacks= groups
    assert set(config) - {"_target_"} == set(params) - {"self"} - ours
    for i, line in enumerate(lines):
        name = line.split(":")[0]
        if name not in params:
            continue
        commented = "#" in line or lines[i - 1].startswith("#")
        default = params[name].default
        assert config[name] == default or commented, f"{name}: {config[name]!r} vs {default!r}"


def test_lightnings_own_flags_work_as_typed(config):
    cfg = config("project=linreg", "trainer.fast_dev_run=true", "logger=csv")
    metrics = train(cfg)
    assert "test/r2" in metrics


# --- console: what would pass unnoticed is said once --------------------------------------------


def test_early_stopping_and_a_lowered_log_interval_are_said(config, said):
    import csv

    cfg = config(
        "project=linreg",
        "trainer.max_epochs=10",
        "trainer.limit_train_batches=20",  # 20 steps an epoch, log interval 50
        "+callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.early_stopping.monitor=val/loss",
        "+callbacks.early_stopping.min_delta=100",  # no epoch improves by that much
        "+callbacks.early_stopping.patience=1",
        "logger=csv",
    )
    train(cfg)
    assert "logging the training loss every 20 steps" in said()
    assert "early stopping ended the run after epoch 2 of 10: Monitored metric val/loss" in said()
    (metrics,) = Path(cfg.paths.output_dir).rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert sum(bool(row.get("train/loss")) for row in rows) == 2  # one per epoch, none before


def test_an_inference_option_given_to_eval_is_applied_not_dropped(config):
    from tests.conftest import FEW_STEPS

    small = [
        "data.synthetic=true",
        "data.synthetic_size=[512,128]",
        "data.val_size=128",
        "data.batch_size=64",
    ]
    cfg = config("project=cifar10", "experiment=cifar10_speedrun", *small, "logger=csv", *FEW_STEPS)
    train(cfg)
    last = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")

    def test_loss(*overrides):
        eval_cfg = config(
            "project=cifar10",
            f"ckpt_path={last}",
            "logger=csv",
            "trainer.limit_test_batches=1",
            *overrides,
            name="eval",
        )
        return evaluate(eval_cfg)["test/loss"]

    # The checkpoint's recipe tests with flip_translate; model.tta=none changes the logits.
    assert test_loss() != pytest.approx(test_loss("model.tta=none"), rel=1e-6)
