"""Learning curves of RL runs: `python -m common.rl.curves <run or sweep folder>... [--out F]`.

Reads each run's TensorBoard scalars (val/return, its std, val/env_steps, val/seconds), draws
the greedy return against environment steps (one line per run, the band is +-1 std over the
evaluation episodes), and prints one table row per run: when the return first reached the
environment's threshold (steps and wall seconds, evaluations included), and the test return.
"""

import argparse
import json
from pathlib import Path

import yaml
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.rl.envs import solved_at


def read_run(run: Path) -> dict:
    """A run's curve {"steps", "seconds", "return", "std"} (lists), its seed, env and metrics."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    if "val/return" not in events.Tags()["scalars"]:
        raise SystemExit(
            f"error: {run} has no val/return in its TensorBoard logs (logger=tensorboard)"
        )
    curve = {
        key: [e.value for e in events.Scalars(tag)]
        for key, tag in (
            ("steps", "val/env_steps"),
            ("seconds", "val/seconds"),
            ("return", "val/return"),
            ("std", "val/return_std"),
        )
    }
    config = yaml.safe_load((run / "config.yaml").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    data = config["data"]
    return {
        **curve,
        "seed": config["seed"],
        "env": data["env"],
        "episodes": data["eval_episodes"],
        "metrics": metrics,
    }


def first_solved(run: dict, threshold: float) -> tuple[float, float] | None:
    """(environment steps, seconds) at the first evaluation at or above `threshold`."""
    for steps, seconds, value in zip(run["steps"], run["seconds"], run["return"], strict=True):
        if value >= threshold:
            return steps, seconds
    return None


def curves_figure(runs: list[dict], threshold: float | None, title: str) -> Figure:
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    for run in runs:
        low = [m - s for m, s in zip(run["return"], run["std"], strict=True)]
        high = [m + s for m, s in zip(run["return"], run["std"], strict=True)]
        (line,) = ax.plot(run["steps"], run["return"], marker=".", label=f"seed {run['seed']}")
        ax.fill_between(run["steps"], low, high, color=line.get_color(), alpha=0.15)
    if threshold is not None:
        ax.axhline(
            threshold, color="grey", linestyle="--", linewidth=1, label=f"solved ({threshold:g})"
        )
    ylabel = f"greedy return (mean of {runs[0]['episodes']} episodes)"
    ax.set(xlabel="environment steps", ylabel=ylabel, title=title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders, or folders of runs")
    parser.add_argument("--out", type=Path, help="the PNG to write (default: beside the runs)")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    run_dirs = sorted({m.parent for f in args.folders for m in f.rglob("metrics.json")})
    if not run_dirs:
        raise SystemExit(f"error: no runs (folders with metrics.json) under {args.folders}")
    runs = sorted((read_run(r) for r in run_dirs), key=lambda r: r["seed"])
    threshold = solved_at(runs[0]["env"])
    print(
        f"| seed | solved at (env steps) | wall s | test return ({runs[0]['episodes']} episodes) |"
    )
    print("| --- | --- | --- | --- |")
    for run in runs:
        solved = first_solved(run, threshold) if threshold is not None else None
        when = (
            f"{solved[0]:,.0f} | {solved[1]:.1f}"
            if solved
            else f"not in {run['steps'][-1]:,.0f} | -"
        )
        test = run["metrics"].get("test/return"), run["metrics"].get("test/return_std")
        tested = f"{test[0]:.1f} ± {test[1]:.1f}" if test[0] is not None else "-"
        print(f"| {run['seed']} | {when} | {tested} |")
    out = args.out or args.folders[0] / "curves.png"
    curves_figure(runs, threshold, args.title or runs[0]["env"]).savefig(out)
    print(out)


if __name__ == "__main__":
    main()
