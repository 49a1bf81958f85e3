"""What a sweep (`-m`) adds up to: one table over its runs, and a figure when one number varies.

Results that vary with the seed (or the cross-validation fold) mean little alone: a sweep such as
`-m seed=range(10) model.optimizer.lr=0.01,0.1` is summarized per point, the replicate keys
(`seed`, `data.fold`) averaged out, as mean ± std of every test metric, in
`<sweep dir>/summary.md`; when one numeric key is all that varies besides them, `summary.png`
plots the test accuracy (or the first test metric) against it. Each run's metrics come from the
`metrics.json` that `make train` writes. A run that fails ends the sweep, with no summary.
"""

import itertools
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from omegaconf import DictConfig


def read_runs(run_dirs: list[Path]) -> list[tuple[list[str], dict[str, float]]]:
    """(overrides, metrics) of each run directory that holds a `metrics.json`."""
    runs = []
    for run in run_dirs:
        metrics_file = run / "metrics.json"
        if not metrics_file.is_file():
            continue
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides = []
        if overrides_file.is_file():
            import yaml

            overrides = list(yaml.safe_load(overrides_file.read_text()) or [])
        runs.append((overrides, json.loads(metrics_file.read_text())))
    return runs


def summarize(runs, over=("seed", "data.fold")) -> list[dict]:
    """Group runs by their overrides other than the keys `over`; per group, each test metric's
    mean and standard deviation (sample std, 0 for one run) and how many runs it counts."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for overrides, metrics in runs:
        point = tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in over)
        groups[point].append(metrics)
    rows = []
    for point, members in groups.items():
        names = sorted({k for m in members for k in m if k.startswith("test/")})
        stats = {}
        for name in names:
            values = [m[name] for m in members if name in m and math.isfinite(m[name])]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                stats[name] = (statistics.fmean(values), std)
        rows.append({"point": point, "runs": len(members), "stats": stats})
    return rows


def table(rows: list[dict]) -> str:
    """The summary as Markdown: the overrides every point shares, then a table of one row per
    point (the overrides it does not share), `mean ± std` per test metric."""
    names = sorted({name for row in rows for name in row["stats"]})
    shared = set.intersection(*(set(row["point"]) for row in rows))
    lines = [
        f"all runs: {' '.join(o for o in rows[0]['point'] if o in shared) or '(defaults)'}",
        "",
        "| " + " | ".join(["point", "runs", *names]) + " |",
        "|" + "---|" * (2 + len(names)),
    ]
    for row in rows:
        point = " ".join(o for o in row["point"] if o not in shared)
        cells = [point or "all", str(row["runs"])]
        for name in names:
            mean, std = row["stats"].get(name, (math.nan, math.nan))
            cells.append(f"{mean:.4f} ± {std:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def varying_number(rows: list[dict]) -> tuple[str, list[float]] | None:
    """(key, its value per row) when the rows differ in one numeric override only."""
    if len(rows) < 2:
        return None
    keys = [dict(o.split("=", 1) for o in row["point"] if "=" in o) for row in rows]
    varying = {k for k in set().union(*keys) if len({str(d.get(k)) for d in keys}) > 1}
    if len(varying) != 1:
        return None
    key = varying.pop()
    try:
        return key, [float(d[key]) for d in keys]
    except (KeyError, ValueError):
        return None


def summary_figure(rows: list[dict], key: str, xs: list[float], metric: str) -> Figure:
    """`metric` (mean ± std over each point's runs) against the numeric override `key`."""
    points = sorted(
        (x, *row["stats"][metric])
        for x, row in zip(xs, rows, strict=True)
        if metric in row["stats"]
    )
    fig = Figure(figsize=(5, 3.5), dpi=100)
    ax = fig.add_subplot()
    x, mean, std = zip(*points, strict=True)
    ax.errorbar(x, mean, yerr=std, marker="o", capsize=3)
    counts = sorted({row["runs"] for row in rows})
    runs = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    ax.set(xlabel=key, ylabel=metric, title=f"{metric}: mean ± std of {runs} runs per point")
    doublings = all(b / a >= 1.9 for a, b in itertools.pairwise(x)) if min(x) > 0 else False
    if doublings:  # 1, 2, 4, 8: a log axis spaces them evenly
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class SweepSummary(Callback):
    """Hydra callback: after a sweep, print and save the summary of its runs (module docstring).
    Runs a cluster launcher starts elsewhere report to no one here: they are left out."""

    def __init__(self, over: list[str] | None = None):
        self.over = tuple(over or ("seed", "data.fold"))
        self.run_dirs: list[Path] = []

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.run_dirs = []

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        self.run_dirs.append(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        runs = read_runs(self.run_dirs)
        if not runs:
            return
        rows = summarize(runs, self.over)
        sweep_dir = self.run_dirs[0].parent
        text = table(rows)
        (sweep_dir / "summary.md").write_text(text + "\n")
        print(f"\nsweep summary ({len(runs)} runs; {', '.join(self.over)} averaged out):")
        print(text)
        varying = varying_number(rows)
        metrics = sorted({name for row in rows for name in row["stats"]})
        if varying is not None and metrics:
            metric = "test/acc" if "test/acc" in metrics else metrics[0]
            summary_figure(rows, *varying, metric).savefig(sweep_dir / "summary.png")
            print(f"figure: {sweep_dir / 'summary.png'}")
        print(f"table: {sweep_dir / 'summary.md'}")
