"""Compose configs exactly as the entry points do, with every path inside a temporary folder."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# FEW_STEPS: overrides for a run that trains, validates and tests on a batch or two.
from benchmarks.export import FEW_STEPS, TINY
from common.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PROJECTS = sorted(p.stem for p in (CONFIGS / "project").glob("*.yaml"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def make_config(
    tmp_path: Path, overrides: list[str] = (), config_name: str = "train", keep_hydra: bool = False
) -> DictConfig:
    """The config `python -m common.<config_name> <overrides>` would run, writing under tmp_path.

    Like Hydra, the task's config loses its `hydra` node (kept with keep_hydra=True).
    """
    register_resolvers()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # `${hydra:...}` interpolations need it
    run_dir = tmp_path / "logs" / str(cfg.name) / f"run{len(list(tmp_path.glob('logs/*/run*')))}"
    with open_dict(cfg):
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.output_dir = str(run_dir)
        cfg.print_config = False
        if not keep_hydra:
            del cfg["hydra"]
    return cfg


def train_once(tmp_path: Path, overrides: list[str]) -> tuple[Path, dict[str, float]]:
    """Train the run `overrides` describe under tmp_path (a module-scoped fixture's checkpoint);
    return its last.ckpt and the metrics `train` returned."""
    from common.train import train

    cfg = make_config(tmp_path, overrides)
    metrics = train(cfg)
    return Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"), metrics


@pytest.fixture
def config(tmp_path):
    return lambda *overrides, name="train": make_config(tmp_path, overrides, name)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """project -> the last.ckpt of a few training steps of its `TINY` run (benchmarks/export.py,
    which measures the same runs), trained on first use and shared by the whole session."""
    made: dict[str, Path] = {}

    def get(project: str) -> Path:
        if project not in made:
            tmp = tmp_path_factory.mktemp(f"tiny-{project}")
            overrides = [f"project={project}", "logger=csv", "data.batch_size=16", *TINY[project]]
            made[project] = train_once(tmp, [*overrides, *FEW_STEPS])[0]
        return made[project]

    return get


def compile_whole(f, *inputs):
    """`torch.compile(f, fullgraph=True)(*inputs)` and the one FX graph it captured (a graph
    break would fail fullgraph; a second graph, the unpacking)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    out = torch.compile(f, backend=backend, fullgraph=True)(*inputs)
    (graph,) = graphs
    return out, graph


def offline(cfg: DictConfig) -> DictConfig:
    """`cfg` with data.synthetic=true where the data has a synthetic stand-in (sources that are
    synthetic already, such as data=shapes, have no such key)."""
    if "synthetic" in cfg.data:
        cfg.data.synthetic = True
    return cfg


class TinyInception(torch.nn.Module):
    """A stand-in for FID's InceptionV3 (whose weights need the network): each image's mean
    colour and spread, uint8 (B, 3, H, W) -> (B, 6)."""

    num_features = 6

    def forward(self, x):
        x = x.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


@pytest.fixture
def tiny_fid(monkeypatch):
    """FID callbacks build their metric on `TinyInception`."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    monkeypatch.setattr(
        "common.callbacks.fid.build_fid",
        lambda weights: FrechetInceptionDistance(feature=TinyInception()),
    )


def run(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path = ROOT):
    """Run a command from the repo root; return the CompletedProcess (text, both streams)."""
    return subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


PYTHON = sys.executable


# Each test file's tier (pyproject.toml names them); a file not listed holds unit tests.
TIERS = {
    "test_configs": "configs",
    "test_smoke": "smoke",
    "test_learning": "learning",
    "test_detection": "learning",
    "test_generative": "learning",
    "test_sentiment": "learning",
    "test_graph_learning": "learning",
    "test_kws_learning": "learning",
    "test_rl_learning": "learning",
    "test_dynamic_graph": "learning",
    "test_export": "process",
    "test_compress": "process",
    "test_serve": "process",
    "test_process": "process",
    "test_reliability": "process",
    "test_predict": "process",
    "test_scaffold": "process",
    "test_benchmarks": "process",
}


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(TIERS.get(Path(str(item.fspath)).stem, "unit"))
