"""Tier 4 (process): the command line, as a user types it, and round trips through files on disk."""

import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from common.eval import evaluate
from common.launcher import makeflags_overrides
from common.train import train
from tests.conftest import PROJECTS, ROOT, run

VENV = str(Path(sys.executable).parents[1])  # make uses the interpreter running the tests


def user_env(tmp_path: Path) -> dict:
    # Nothing from an outer `make test ARGS=...` may leak into the make commands tested here.
    leaks = ("HYDRA_FULL_ERROR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PROJECT", "ARGS", "DRY")
    env = {k: v for k, v in os.environ.items() if k not in leaks}
    env.update(LOG_DIR=str(tmp_path / "logs"), DATA_DIR=str(tmp_path / "data"), COLUMNS="120")
    return env


def make(tmp_path: Path, *words: str, timeout: float = 300):
    return run("make", "-s", f"VENV={VENV}", *words, env=user_env(tmp_path), timeout=timeout)


def make_ddp(tmp_path: Path, *words: str, timeout: float = 180):
    """`make train` as two DDP processes on the CPU, with `words` (PROJECT=... among them). The
    timeout turns a hang (a rank waiting forever on another) into a failure."""
    ddp = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    return make(tmp_path, "train", *ddp, *words, timeout=timeout)


def make_ddp_linreg(tmp_path: Path, *words: str):
    """`make train PROJECT=linreg` as two DDP processes on the CPU, with `words` added."""
    return make_ddp(tmp_path, "PROJECT=linreg", *words)


def assert_one_readable_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# --- make forwards key=value words to Hydra unchanged and in order ------------------------------


def test_make_forwards_nested_keys_lists_quotes_and_args(tmp_path):
    words = [
        "trainer.max_epochs=3",
        "trainer.devices=[0,1]",
        "model.net.width=64",
        "+logger.note=hello world",
        "name='quoted value'",
        'tags="a b"',
        "path=${paths.log_dir}/x",
        "data.root=C:\\data",
    ]
    result = make(
        tmp_path,
        "train",
        "PROJECT=linreg",
        "DRY=1",
        *words,
        "ARGS=-m '~callbacks.lr_monitor' --cfg job",
    )
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip())
    # Hydra reads its options only before the overrides: the launcher moves them first.
    assert argv[:7] == ["python", "-m", "common.train", "-m", "--cfg", "job", "project=linreg"]
    assert argv[7:] == [*words, "~callbacks.lr_monitor"]


def test_make_predict_and_config_group_words_reach_hydra(tmp_path):
    words = ["ckpt_path=last", "input=my photo.jpg", "model/optimizer=muon"]
    result = make(tmp_path, "predict", "PROJECT=detection", "DRY=1", *words)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip())
    assert argv == ["python", "-m", "common.predict", "project=detection", *words]


def test_make_sample_reaches_its_entry_point(tmp_path):
    result = make(tmp_path, "sample", "PROJECT=vae", "DRY=1", "ckpt_path=last", "n=16")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip())
    assert argv == ["python", "-m", "common.sample", "project=vae", "ckpt_path=last", "n=16"]


def test_makeflags_parser_undoes_makes_escaping():
    flags = r"s -- b=$$x c=a\ b\\c a.b=1 PROJECT=vit"
    assert makeflags_overrides(flags) == ["PROJECT=vit", "a.b=1", "c=a b\\c", "b=$x"]
    assert makeflags_overrides("s") == []


def test_unknown_project_lists_the_valid_ones(tmp_path):
    result = make(tmp_path, "train", "PROJECT=nope")
    assert_one_readable_error(result, "unknown project 'nope'", ", ".join(PROJECTS))


def test_make_list_shows_every_project(tmp_path):
    result = make(tmp_path, "list")
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == PROJECTS


def test_misspelled_key_is_one_readable_error(tmp_path):
    result = run(
        sys.executable, "-m", "common.train", "trainer.max_epoch=1", env=user_env(tmp_path)
    )
    assert_one_readable_error(result, "error: trainer.max_epoch is not a config key")
    assert "did you mean trainer.max_epochs?" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_missing_data_is_one_readable_error(tmp_path):
    result = run(
        sys.executable,
        "-m",
        "common.train",
        "project=mnist",
        "data.download=false",
        env=user_env(tmp_path),
    )
    assert_one_readable_error(result, "error: MNIST files missing", "data.synthetic=true")


# Slow: the quick tier takes the same path in test_reliability.py (a bad value, one line).
@pytest.mark.slow
def test_corrupt_checkpoint_is_one_readable_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 100)
    result = run(
        sys.executable,
        "-m",
        "common.eval",
        "project=linreg",
        f"ckpt_path={bad}",
        env=user_env(tmp_path),
    )
    assert_one_readable_error(result, "error: cannot load checkpoint", str(bad))
    # A launch refused before testing began leaves no run directory (nor its log) behind.
    assert not any((tmp_path / "logs").rglob("*.yaml")) and not any(
        (tmp_path / "logs").rglob("*.log")
    )


# --- round trips ---------------------------------------------------------------------------------


def test_train_then_eval_reproduces_the_test_metric(config):
    cfg = config(
        "project=mnist",
        "data.synthetic=true",
        "data.synthetic_size=[3000,500]",
        "trainer.max_epochs=2",
        "model.net.width=8",
        "logger=csv",
        "seed=1",
    )
    trained = train(cfg)
    best = next(Path(cfg.paths.output_dir, "checkpoints").glob("epoch_*.ckpt"))
    # No seed and no net width on the command line: eval rebuilds the checkpoint's own net and
    # its own data (the seed draws the synthetic images).
    evaluated = evaluate(config("project=mnist", f"ckpt_path={best}", "logger=csv", name="eval"))
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-5)


def test_eval_of_a_checkpoint_saved_by_older_code_drops_the_retired_keys(config):
    cfg = config("project=linreg", "trainer.max_epochs=1", "logger=csv")
    trained = train(cfg)
    last = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    state = torch.load(last, weights_only=True)
    state["config"]["model"]["sync_batchnorm"] = True  # a key of an older version
    state["config"]["data"]["bucket"] = True
    del state["integrity"]  # older code wrote no digest (and this edit would not match one)
    torch.save(state, last)
    with (
        pytest.warns(UserWarning, match="ignoring sync_batchnorm of LinearRegression"),
        pytest.warns(UserWarning, match="no integrity digest"),
    ):
        evaluated = evaluate(
            config("project=linreg", f"ckpt_path={last}", "logger=csv", name="eval")
        )
    assert evaluated["test/r2"] == pytest.approx(trained["test/r2"], abs=1e-6)


def test_eval_data_is_the_checkpoints_with_the_command_lines_data_overrides(config):
    from common.runs import checkpoint_data, load_checkpoint, saved_config

    cfg = config("project=linreg", "trainer.max_epochs=1", "logger=csv", "seed=7")
    train(cfg)
    last = str(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"))

    def eval_data(*overrides):
        eval_cfg = config("project=linreg", f"ckpt_path={last}", *overrides, name="eval")
        return checkpoint_data(eval_cfg, saved_config(eval_cfg, load_checkpoint(last), last))

    data = eval_data("data.test_size=100")
    assert (data.seed, data.test_size, data.num_samples) == (7, 100, 4000)  # trained seed kept
    assert eval_data("data=diabetes").source == "diabetes"  # other data, this command's config


def test_resume_from_last_continues_the_epoch_count(config, tmp_path):
    first = config("project=linreg", "trainer.max_epochs=1", "logger=csv")
    train(first)
    last = Path(first.paths.output_dir, "checkpoints", "last.ckpt")
    steps_per_epoch = torch.load(last, weights_only=True)["global_step"]
    resumed = config("project=linreg", "trainer.max_epochs=3", "ckpt_path=last", "logger=csv")
    train(resumed)
    state = torch.load(
        Path(resumed.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=True
    )
    assert state["epoch"] == 2  # epochs 1 and 2 ran here; epoch 0 came from the checkpoint
    assert state["global_step"] == 3 * steps_per_epoch


def test_last_checkpoint_is_the_last_epoch_even_when_the_best_was_earlier(config):
    # Watching the validation loss for a maximum makes the first epoch the best: a top-k save
    # happens only there, and Lightning alone would leave last.ckpt at epoch 0.
    cfg = config("project=linreg", "trainer.max_epochs=3", "monitor_mode=max", "logger=csv")
    cfg.callbacks.early_stopping = None
    train(cfg)
    folder = Path(cfg.paths.output_dir, "checkpoints")
    (best,) = folder.glob("epoch_*.ckpt")
    assert torch.load(best, weights_only=True)["epoch"] == 0
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert (
        last["epoch"] == 2
        and last["global_step"] == 3 * torch.load(best, weights_only=True)["global_step"]
    )


def test_ckpt_path_last_without_runs_is_a_user_error(config):
    with pytest.raises(UserError, match="no finished or stopped run of 'linreg'"):
        train(config("project=linreg", "ckpt_path=last"))


def test_checkpoints_load_with_weights_only_and_carry_their_config(config):
    cfg = config("project=linreg", "trainer.max_epochs=1", "logger=csv")
    train(cfg)
    for path in Path(cfg.paths.output_dir, "checkpoints").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)
        assert state["config"]["model"]["net"]["in_features"] == 8
        assert "optimizer" not in state.get("hyper_parameters", {})  # no partials: weights_only


@pytest.mark.slow
def test_run_directory_holds_config_overrides_and_commit(tmp_path):
    result = make(
        tmp_path,
        "train",
        "PROJECT=linreg",
        "trainer.max_epochs=1",
        "model.optimizer.lr=0.04",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "logs" / "linreg").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}", run_dir.name)
    assert "lr: 0.04" in (run_dir / "config.yaml").read_text()
    info = (run_dir / "run.yaml").read_text()
    assert "model.optimizer.lr=0.04" in info and "commit:" in info
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert re.search(r"test/r2\s*│\s*0\.99", result.stdout), result.stdout[-2000:]


@pytest.mark.slow
def test_make_train_mnist_synthetic_writes_one_run_directory(tmp_path):
    result = make(
        tmp_path,
        "train",
        "PROJECT=mnist",
        "data.synthetic=true",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=10",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "mnist").iterdir()
    assert {"config.yaml", "run.yaml", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    events = b"".join(p.read_bytes() for p in run_dir.glob("events.out.tfevents.*"))
    assert b"val/confusion_matrix" in events and b"val/acc" in events
    evaluated = make(tmp_path, "eval", "PROJECT=mnist", "ckpt_path=last", "data.synthetic=true")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test/acc" in evaluated.stdout


@pytest.mark.slow
def test_two_launches_in_the_same_second_get_two_directories(tmp_path):
    import subprocess

    command = ["make", "-s", f"VENV={VENV}", "train", "PROJECT=linreg", "debug=fdr"]
    procs = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env=user_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    assert len(list((tmp_path / "logs" / "linreg").iterdir())) == 2


# The grid search runs in `make test-all`: the optuna one covers the sweeper machinery here.
@pytest.mark.slow
@pytest.mark.parametrize("search", ["grid", "optuna"])
def test_sweep_runs_each_point_in_its_own_folder(tmp_path, search):
    if search == "grid":
        args = "-m model.optimizer.lr=0.01,0.05"
    else:
        args = "-m hparams_search=mnist_optuna hydra.sweeper.n_trials=2 hydra.sweeper.sampler.n_startup_trials=1"
    project = "linreg" if search == "grid" else "mnist"
    result = make(
        tmp_path,
        "train",
        f"PROJECT={project}",
        "debug=fdr",
        "data.synthetic=true",
        f"ARGS={args}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / project / "multirun").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def test_eval_without_a_checkpoint_is_a_user_error(config):
    with pytest.raises(UserError, match="ckpt_path=<file>"):
        evaluate(config("project=linreg", name="eval"))


def test_eval_of_another_projects_checkpoint_names_the_right_project(config):
    cfg = config("project=linreg", "trainer.max_epochs=1", "logger=csv")
    train(cfg)
    last = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    with pytest.raises(UserError, match="PROJECT=linreg"):
        evaluate(config("project=mnist", f"ckpt_path={last}", name="eval"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["test_ckpt=first"], "not one of best, last"),
        (["train=false"], "train=false tests a checkpoint"),
        (["train=false", "test=false"], "nothing to do"),
    ],
)
def test_contradictory_run_switches_are_user_errors(config, overrides, message):
    with pytest.raises(UserError, match=message):
        train(config("project=linreg", *overrides))


@pytest.mark.slow
def test_ddp_on_cpu_trains_with_one_run_directory(tmp_path):
    words = ("PROJECT=mnist", "data.synthetic=true", "trainer.max_epochs=1")
    result = make_ddp(tmp_path, *words, "trainer.limit_train_batches=10", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "mnist").iterdir()  # the second rank wrote no run of its own
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "test/acc" in result.stdout


@pytest.mark.slow
def test_full_batch_graph_under_ddp_is_one_readable_error(tmp_path):
    result = make_ddp(tmp_path, "PROJECT=graph", "data.synthetic=true")
    assert_one_readable_error(result, "nothing to split over 2 processes: use trainer.devices=1")
    assert result.stderr.count("error:") == 1  # refused before a second process said it too
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


@pytest.mark.slow
def test_graph_classification_trains_under_ddp(tmp_path):
    words = ("PROJECT=graph", "experiment=graph_gin", "data.synthetic=true", "trainer.max_epochs=2")
    result = make_ddp(tmp_path, *words, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "graph").iterdir()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "test/acc" in result.stdout


@pytest.mark.slow
def test_keyword_spotting_trains_under_ddp_with_its_pictures(tmp_path):
    """Clips sharded over two processes, augmented on each one's device, the confusion matrix
    summed over both, pictures and audio from rank 0 only."""
    words = ("PROJECT=kws", "data.synthetic=true", "data.synthetic_size=[512,128]")
    result = make_ddp(tmp_path, *words, "trainer.max_epochs=1", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "kws").iterdir()
    pictures = sorted(p.name for p in (run_dir / "images").iterdir())
    assert pictures == [
        "train_spec_augment_epoch000.png",
        "val_confusion_matrix_epoch000.png",
        "val_log_mel_by_class_epoch000.png",
    ]
    assert "test/acc" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("project", "rollouts", "steps"),
    [
        ("ppo", 2, 2 * 128 * 4 * 2),  # rollouts x steps x envs x processes
        ("dqn", 4, 4 * 256 * 1 * 2),  # learning from rollout 2 on: 1,024 steps >= 1,000
        ("reinforce", 2, None),  # whole episodes: as long as they last, in each process
    ],
)
def test_rl_agents_learn_as_data_parallel_learners_under_ddp(tmp_path, project, rollouts, steps):
    """Two processes, each stepping its own environments: their steps add up, every process
    agrees on the count, and the 11 evaluation episodes are shared out (5 and 6) and reported
    as one mean, equal to what one process reports for the same checkpoint."""
    words = (f"PROJECT={project}", "trainer.max_epochs=1", f"data.rollouts_per_epoch={rollouts}")
    result = make_ddp(tmp_path, *words, "logger=csv", "data.eval_episodes=11", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / project).iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    # Logged as the mean over processes; saved from rank 0: equal only if every process agrees.
    assert torch.load(ckpt, weights_only=True)["env_steps"] == metrics["val/env_steps"]
    if steps is not None:
        assert metrics["val/env_steps"] == steps
    assert "train/loss" in metrics  # every process stepped its optimizer together
    assert "sync_dist" not in result.stderr  # the returns are reduced exactly, then logged
    ddp_test = read_test_metrics(run_dir)
    words = (f"PROJECT={project}", f"ckpt_path={ckpt}", "logger=csv", "data.eval_episodes=11")
    single = make(tmp_path / "single", "eval", *words)
    assert single.returncode == 0, single.stderr[-3000:]
    assert read_test_metrics(tmp_path / "single" / "logs") == pytest.approx(ddp_test)


@pytest.mark.slow
def test_sweep_with_ddp_is_refused_with_the_alternative(tmp_path):
    result = make(
        tmp_path,
        "train",
        "PROJECT=linreg",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "ARGS=-m model.optimizer.lr=0.01,0.05",
    )
    assert_one_readable_error(result, "cannot use trainer.strategy=ddp", "trainer=ddp_spawn")
    runs = [p for p in (tmp_path / "logs" / "linreg").rglob("checkpoints")]
    assert not runs  # refused before any training


def read_test_metrics(run_root: Path) -> dict[str, float]:
    """Last value of each test metric in the single run under run_root (CSV logger)."""
    (metrics_file,) = run_root.rglob("metrics.csv")
    rows = metrics_file.read_text().splitlines()
    header = rows[0].split(",")
    values = {}
    for row in rows[1:]:
        for key, value in zip(header, row.split(","), strict=True):
            if key.startswith("test/") and value:
                values[key] = float(value)
    return values


# The DataLoader path runs in `make test-all` (its sampler is tested in test_data.py too).
@pytest.mark.slow
@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_ddp_evaluation_equals_single_process(config, tmp_path, loader):
    # 4,011 samples: a test set of 401, so the two ranks get uneven shards (200 and 201).
    data = ["data.num_samples=4011", f"data.loader={loader}"]
    cfg = config("project=linreg", "trainer.max_epochs=1", "logger=csv", *data)
    train(cfg)
    ckpt = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    results = {}
    for name, trainer in (("single", []), ("ddp", ["trainer=ddp", "trainer.devices=2"])):
        out = tmp_path / name
        env = user_env(out)
        command = ["make", "-s", f"VENV={VENV}", "eval", "PROJECT=linreg", f"ckpt_path={ckpt}"]
        command += ["logger=csv", "trainer.accelerator=cpu", *trainer, *data]
        result = run(*command, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        results[name] = read_test_metrics(out / "logs")
    assert results["single"].keys() == results["ddp"].keys() >= {"test/loss", "test/r2"}
    for key, value in results["single"].items():
        assert results["ddp"][key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_that_raises_ends_the_whole_ddp_job(tmp_path, rank):
    result = make_ddp_linreg(
        tmp_path,
        "+callbacks.crash._target_=tests.helpers.CrashOnRank",
        f"+callbacks.crash.rank={rank}",
    )
    assert result.returncode != 0
    assert f"injected failure on rank {rank}" in result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_on_one_machine(tmp_path):
    """Two `torchrun --nnodes=2` launches on 127.0.0.1, as two machines would run them."""
    import subprocess

    port, run_dir = free_port(), tmp_path / "run"
    launches = []
    for node in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={node}",
            "--nproc_per_node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "common.train",
            "project=linreg",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.num_nodes=2",
            "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}",
        ]
        launches.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=user_env(tmp_path),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
