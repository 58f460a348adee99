"""The figures st_poetry writes.

Drawn on `matplotlib.figure.Figure` objects, which save through the Agg canvas without pyplot: no display
needed and no global figure state between calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def plot_metric_bars(values: Mapping[str, Mapping[str, float]], path: str | Path, title: str = "") -> None:
    """Grouped bars: one group per metric, one bar per model (or baseline), each labelled with its value.

    `values` maps a row name to {metric: value in [0, 1]}; a metric a row lacks leaves a gap.
    """
    rows = list(values)
    metrics = list(dict.fromkeys(metric for row in values.values() for metric in row))
    width = 0.8 / len(rows)
    figure = Figure(figsize=(max(6.0, 1.1 * len(metrics) * max(1, len(rows) / 2.5)), 4.5), layout="constrained")
    axes = figure.add_subplot()
    for index, row in enumerate(rows):
        positions = [m + (index - (len(rows) - 1) / 2) * width for m in range(len(metrics))]
        heights = [values[row].get(metric, float("nan")) for metric in metrics]
        bars = axes.bar(positions, heights, width, label=row)
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    axes.set_xticks(range(len(metrics)), metrics)
    axes.set_ylim(0, 1.08)
    axes.set_ylabel("score")
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    if title:
        axes.set_title(title)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=min(len(rows), 4), frameon=False)
    figure.savefig(path, dpi=120)


def plot_training_curves(
    log: Sequence[Mapping[str, float]], path: str | Path, metric: str, metric_label: str = "score"
) -> None:
    """Train loss and eval loss (left axis) and the eval `metric` (right axis) against steps, on one figure.

    `log` is the trainer's log_history (records with "step" and some of "loss", "eval_loss", `metric`).
    """

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(record["step"], record[key]) for record in log if key in record]
        return [step for step, _ in points], [value for _, value in points]

    figure = Figure(figsize=(8.0, 4.5), layout="constrained")
    losses = figure.add_subplot()
    losses.plot(*series("loss"), color="tab:blue", alpha=0.8, label="train loss")
    losses.plot(*series("eval_loss"), "o-", color="tab:orange", label="eval loss")
    losses.set_xlabel("step")
    losses.set_ylabel("loss")
    losses.grid(alpha=0.3)
    scores = losses.twinx()
    scores.plot(*series(metric), "s-", color="tab:green", label=f"eval {metric_label}")
    scores.set_ylabel(f"eval {metric_label}")
    handles = [*losses.get_legend_handles_labels()[0], *scores.get_legend_handles_labels()[0]]
    losses.legend(handles=handles, loc="best")
    losses.set_title(f"training curves (eval {metric_label} at step 0 = the base model)")
    figure.savefig(path, dpi=120)


def plot_fusion_sweep(
    sweeps: Mapping[str, Mapping[str, Any]],
    baselines: Mapping[str, Mapping[str, float]],
    path: str | Path,
    metric: str,
    title: str = "",
) -> None:
    """One panel per model: `metric` against alpha, a line per fusion and candidate depth, the best point marked.

    `sweeps` maps a model to {"best": point, "points": [{"fusion", "depth", "alpha", metric, ...}, ...]};
    `baselines` maps it to {row name: value}, drawn as dashed lines (the dense model, BM25 alone).
    """
    figure = Figure(figsize=(6.0 * len(sweeps), 5.6), layout="constrained")
    panels = figure.subplots(1, len(sweeps), squeeze=False)[0]
    for axes, (name, sweep) in zip(panels, sweeps.items(), strict=True):
        points = sweep["points"]
        depths = sorted({point["depth"] for point in points})
        for fusion, style in zip(dict.fromkeys(point["fusion"] for point in points), ("-", ":"), strict=False):
            for color, depth in enumerate(depths):
                line = [point for point in points if point["fusion"] == fusion and point["depth"] == depth]
                axes.plot(
                    [point["alpha"] for point in line],
                    [point[metric] for point in line],
                    style,
                    color=f"C{color}",
                    label=f"{fusion}, depth {depth}",
                )
        for label, value in baselines.get(name, {}).items():
            axes.axhline(value, color="grey", linestyle="--", linewidth=1)
            axes.annotate(label, (0.0, value), xytext=(2, 2), textcoords="offset points", fontsize=7, color="grey")
        best = sweep["best"]
        axes.plot(
            best["alpha"], best[metric], "k*", markersize=11, label=f"best: {best['fusion']}, depth {best['depth']}"
        )
        axes.set_xlabel("alpha (dense weight; 0 = BM25 only, 1 = dense only)")
        axes.set_ylabel(metric)
        axes.set_title(name)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, frameon=False)
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=120)
