"""Tier 0 (configs): every option of every config group composes, and what it describes instantiates."""

import os

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf

from common.callbacks.grad_debug import GradientDebugger
from common.checks import check_types
from common.errors import UserError
from common.instantiate import (
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_model,
    instantiate_trainer,
)
from common.resolvers import REPO_ROOT, register_resolvers
from tests.conftest import CONFIGS, PROJECTS, make_config, offline, options


def project_of(option: str) -> str:
    """Experiments and searches are named <project>_<variant>."""
    return next(p for p in PROJECTS if option.startswith(p))


@pytest.mark.parametrize("project", PROJECTS)
def test_project_builds_data_and_model(tmp_path, project):
    cfg = offline(make_config(tmp_path, [f"project={project}"]))
    check_types(cfg)  # what `make train` checks before any work accepts every shipped config
    assert cfg.name == project
    # A GAN monitors nothing (it keeps its last weights); every other project a val/ metric.
    assert cfg.monitor is None or cfg.monitor.split("/")[0] == "val"
    assert isinstance(instantiate(cfg.data), LightningDataModule)
    assert isinstance(instantiate(cfg.model), LightningModule)


# The project whose model takes each data option's batches.
DATA_PROJECT = {
    "regression": "linreg",
    "diabetes": "linreg",
    "shapes": "detection",
    "voc": "detection",
}
DATA_PROJECT |= dict.fromkeys(["sentiment_synthetic", "imdb", "text_csv"], "sentiment")
DATA_PROJECT |= dict.fromkeys(["cora", "citeseer", "pubmed", "mutag", "proteins"], "graph")
DATA_PROJECT |= dict.fromkeys(["speech_commands", "audio_folder"], "kws")
DATA_PROJECT["gym"] = "dqn"


@pytest.mark.parametrize("option", options("data"))
def test_data_option(tmp_path, option):
    overrides = [f"project={DATA_PROJECT.get(option, 'mnist')}", f"data={option}"]
    if option == "text_csv":  # a file of its own, since it has no synthetic stand-in
        rows = "".join(f"{'a fine film' if i % 2 else 'a dull film'},{i % 2}\n" for i in range(200))
        (tmp_path / "texts.csv").write_text("text,label\n" + rows)
        overrides.append(f"data.path={tmp_path / 'texts.csv'}")
    if DATA_PROJECT.get(option) == "kws":  # synthetic speech costs 2 ms a clip to make
        overrides.append("data.synthetic_size=[256,64]")
    cfg = offline(make_config(tmp_path, overrides))
    check_types(cfg)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    if option == "gym":  # its loaders ask the model for actions: tests/test_rl.py, with one
        assert dm.train_envs.num_envs == cfg.data.num_envs
        return
    batch = next(iter(dm.train_dataloader()))
    if cfg.data.get("loader") == "full":  # (the whole graph, its training nodes)
        graph, nodes = batch
        assert graph.num_nodes == cfg.data.num_nodes
        assert len(nodes) == cfg.data.train_per_class * cfg.data.num_classes
    elif hasattr(batch, "num_graphs"):  # small graphs batched as one
        assert batch.num_graphs == cfg.data.batch_size
    else:
        *inputs, y = batch  # (images, labels), (tokens, lengths, labels)
        assert len(inputs[0]) == len(y) == cfg.data.batch_size


@pytest.mark.parametrize("option", options("model"))
def test_model_option_checkpoints_load_with_weights_only(tmp_path, option):
    """A module's saved hyperparameters, weights and data spec are plain values and tensors:
    torch's safe `weights_only=True` loading takes them (an OmegaConf container would not)."""
    cfg = make_config(tmp_path, [f"project={project_of(option)}", f"model={option}"])
    check_types(cfg)
    model = instantiate_model(cfg.model)
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    loaded = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert loaded["hyper_parameters"] == dict(model.hparams)
    assert loaded["state_dict"].keys() == model.state_dict().keys()
    assert "data_spec" in loaded


@pytest.mark.parametrize("option", options("model/net"))
def test_net_option(tmp_path, option):
    project = "vit" if "vit" in option else "cifar10"
    overrides = [f"project={project}", f"model/net={option}"]
    if "torchvision_vit" in option:  # its own size: no ViT size preset, and a small input here
        overrides += ["~model/vit_size", "model.net.image_size=32"]
    cfg = make_config(tmp_path, overrides)
    check_types(cfg)
    net = instantiate(cfg.model.net)
    size = cfg.model.net.get("image_size", 32)
    assert net(torch.randn(2, 3, size, size)).shape == (2, cfg.data.num_classes)


@pytest.mark.parametrize(
    "option",  # the C++ one compiles on first use (~15 s): CI's tier
    [
        pytest.param(o, marks=pytest.mark.slow) if "cpp" in o else o
        for o in options("model/net/activation")
    ],
)
@pytest.mark.parametrize("project", ["mnist", pytest.param("cifar10", marks=pytest.mark.slow)])
def test_activation_option(tmp_path, project, option):
    """Each activation reaches every activation site of the net, and gradients reach every
    parameter through it."""
    overrides = [f"project={project}", f"model/net/activation={option}", "model.net.width=4"]
    if project == "cifar10":
        overrides.append("model.net.depths=[1,1,1,1]")
    cfg = make_config(tmp_path, overrides)
    check_types(cfg)
    net = instantiate(cfg.model.net)
    chosen = type(instantiate(cfg.model.net.activation)())
    assert sum(isinstance(m, chosen) for m in net.modules()) == (3 if project == "mnist" else 9)
    size = 28 if project == "mnist" else 32
    out = net(torch.randn(2, cfg.data.in_chans, size, size))
    assert out.shape == (2, cfg.data.num_classes)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("option", options("model/kws_net"))
def test_kws_net_option(tmp_path, option):
    cfg = make_config(tmp_path, ["project=kws", f"model/kws_net={option}"])
    check_types(cfg)
    net = instantiate(cfg.model.net)
    waves = torch.randn(2, cfg.data.sample_rate)  # one second
    assert net(waves).shape == (2, cfg.data.num_classes)


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_option(tmp_path, option):
    cfg = make_config(tmp_path, [f"trainer={option}"])
    check_types(cfg)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(UserError, match="This machine has 0 CUDA GPU"):
            instantiate_trainer(cfg)
        return
    assert isinstance(instantiate_trainer(cfg), Trainer)


@pytest.mark.parametrize(
    "option",
    [pytest.param(o, marks=pytest.mark.slow) if o == "mlflow" else o for o in options("logger")],
)
def test_logger_option(tmp_path, option):  # mlflow's import alone takes seconds: slow tier
    if option == "mlflow":
        pytest.importorskip(
            "mlflow", reason="mlflow is an optional extra: pip install -e '.[mlflow]'"
        )
    overrides = [f"logger={option}"]
    if option == "wandb":
        overrides.append("logger.wandb.offline=true")
    cfg = make_config(tmp_path, overrides)
    check_types(cfg)
    loggers = instantiate_loggers(cfg)
    assert loggers
    for logger in loggers:  # really write: creating the experiment is where setups fail
        logger.log_metrics({"val/loss": 1.0}, step=0)
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # else the next test's WandbLogger reuses this run


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_option(tmp_path, option):
    cfg = make_config(tmp_path, [f"callbacks={option}"])
    check_types(cfg)
    callbacks = instantiate_callbacks(cfg)
    assert all(isinstance(cb, Callback) for cb in callbacks)
    if option == "default":
        names = {type(cb).__name__ for cb in callbacks}
        assert {"ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "ProgressBar"} <= names


def test_checkpoint_and_early_stopping_watch_the_project_metric(tmp_path):
    cfg = make_config(tmp_path, ["project=mnist"])
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc"
    assert cfg.callbacks.model_checkpoint.mode == "max"
    assert cfg.callbacks.early_stopping.monitor == "val/acc"


# What each debug mode must change in the Trainer, against the project's own settings.
DEBUG_EFFECTS = {
    "default": {"max_epochs": 1},
    "fdr": {"fast_dev_run": True},
    "limit": {"max_epochs": 3, "limit_train_batches": 0.05, "limit_test_batches": 0.1},
    "overfit": {"overfit_batches": 3, "max_epochs": 30},
    "profiler": {"max_epochs": 1},
    "grad": {},  # the recipe as it is, plus the gradient debugger (below)
}


@pytest.mark.parametrize("option", options("debug"))
def test_debug_option(tmp_path, option):
    from lightning.pytorch.profilers import SimpleProfiler

    plain = instantiate(make_config(tmp_path, ["project=mnist"]).trainer)
    cfg = make_config(tmp_path, ["project=mnist", f"debug={option}"])
    check_types(cfg)
    trainer = instantiate(cfg.trainer)
    for key, value in DEBUG_EFFECTS[option].items():
        assert getattr(trainer, key) == value != getattr(plain, key), key
    assert isinstance(trainer.profiler, SimpleProfiler) == (option == "profiler")
    debuggers = [c for c in instantiate_callbacks(cfg) if isinstance(c, GradientDebugger)]
    assert len(debuggers) == (option == "grad")


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_option(tmp_path, option):
    cfg = make_config(tmp_path, [f"project={project_of(option)}", f"experiment={option}"])
    check_types(cfg)
    instantiate(cfg.data)
    instantiate(cfg.model)


@pytest.mark.parametrize("option", options("hparams_search"))
def test_hparams_search_option(tmp_path, option):
    overrides = [f"project={project_of(option)}", f"hparams_search={option}"]
    cfg = make_config(tmp_path, overrides, keep_hydra=True)
    check_types(cfg)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    for key in cfg.hydra.sweeper.params:  # every swept key exists in the composed config
        assert OmegaConf.select(cfg, key) is not None, key


def test_eval_config_composes(tmp_path):
    cfg = make_config(tmp_path, ["project=linreg", "ckpt_path=x.ckpt"], "eval", keep_hydra=True)
    assert cfg.ckpt_path == "x.ckpt"
    assert "eval" in cfg.hydra.run.dir


def test_paths_default_under_the_repo():
    register_resolvers()
    paths = OmegaConf.load(CONFIGS / "paths" / "default.yaml")
    assert paths.root_dir == str(REPO_ROOT)
    assert REPO_ROOT.joinpath("configs", "train.yaml").is_file()


def test_run_id_is_unique_per_config_and_stable_within_one(tmp_path):
    a = make_config(tmp_path, keep_hydra=True)
    b = make_config(tmp_path, keep_hydra=True)
    dir_a = a.hydra.run.dir
    assert a.hydra.run.dir == dir_a  # resolved once per config, like `now`
    assert dir_a != b.hydra.run.dir
    assert dir_a.split("/")[-2] == "mnist"


def test_bad_loader_name_is_a_user_error(tmp_path):
    cfg = make_config(tmp_path, ["data.loader=fast"])
    with pytest.raises(Exception) as info:
        instantiate(cfg.data)
    assert isinstance(info.value.__cause__, UserError)
    assert "device, dataloader" in str(info.value.__cause__)


def test_slurm_launcher_takes_its_shape_from_the_trainer(tmp_path):
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    cfg = make_config(tmp_path, overrides, keep_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


def test_slurm_batch_script_is_valid_bash():
    import subprocess

    script = REPO_ROOT / "scripts" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "srun" in script.read_text() and "hydra.run.dir=" in script.read_text()


@pytest.mark.parametrize("project", ["mnist", "vit"])
def test_more_gpus_than_the_machine_has_is_one_readable_error(tmp_path, project):
    # `make train PROJECT=vit trainer.devices=4` on a machine with fewer GPUs.
    have = torch.cuda.device_count()
    overrides = [f"project={project}", "trainer.accelerator=gpu", f"trainer.devices={have + 4}"]
    cfg = make_config(tmp_path, overrides)
    with pytest.raises(UserError, match=f"This machine has {have} CUDA GPU") as info:
        instantiate_trainer(cfg)
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize(
    ("feature", "follow", "expected"),
    [("avx512_bf16", True, "bf16-mixed"), (None, True, "32-true"), (None, False, "bf16-mixed")],
)
def test_bf16_only_where_the_cpu_computes_it(
    tmp_path, monkeypatch, caplog, feature, follow, expected
):
    # The speed recipe's bf16 on a CPU without bf16 instructions: 17x slower than fp32.
    from common import instantiate as module

    monkeypatch.setattr(module, "cpu_bf16_feature", lambda: feature)
    monkeypatch.setattr(module, "_said", set())
    overrides = ["trainer=cpu", "trainer.precision=bf16-mixed"]
    cfg = make_config(tmp_path, [*overrides, f"precision_follows_hardware={follow}"])
    with caplog.at_level("INFO"):
        assert instantiate_trainer(cfg).precision == expected
        instantiate_trainer(cfg)  # a second Trainer (train, then test): no second line
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:")]
    assert len(said) == int(follow)  # one line saying which, unless told to keep bf16
    if follow:
        assert said[0].startswith(f"precision: {expected}")
    assert cfg.trainer.precision == expected  # what the run directory's config.yaml records


@pytest.mark.parametrize(
    ("isa", "flags", "found"),
    [
        (None, "fpu sse avx2 avx512f avx512_bf16 amx_tile", "avx512_bf16"),
        (None, "fpu sse avx2 avx512f amx_bf16 avx512_bf16", "amx_bf16"),
        (None, "fp asimd bf16 i8mm", "bf16"),  # an Arm CPU's Features line
        (None, "fpu sse avx2 fma", None),
        ("AVX2", "fpu avx2 avx512f avx512_bf16", None),  # how this machine imitates an AVX2 CPU
        ("AVX512_CORE_AMX", "fpu avx512f avx512_bf16", "avx512_bf16"),
    ],
)
def test_the_cpus_bf16_feature_is_read_from_its_flags(tmp_path, monkeypatch, isa, flags, found):
    from common import instantiate as module

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(module, "CPUINFO", cpuinfo)
    if isa:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert module.cpu_bf16_feature() == found


def test_threads_sets_torchs_pool_and_refuses_nonsense(monkeypatch):
    from common.train import set_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # restored, whatever set_threads writes
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        # What Lightning's DDP launchers read instead of setting cores / processes themselves.
        assert os.environ["OMP_NUM_THREADS"] == "1"
        set_threads(None)  # torch's default stays as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (-2, "many", True, 1.5):
        with pytest.raises(UserError, match="threads="):
            set_threads(bad)
