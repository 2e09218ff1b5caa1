"""PNG charts of a suite run (matplotlib, an optional dependency of the benchmarks only):
  relative.png     every figure (but latencies) as cagefs's and the plain directory's speed
                   relative to gocryptfs (log scale; right of 1 is better than gocryptfs);
  SECTION.png      each section's medians, one panel per unit, grouped by target;
  fio-latency.png  fio's completion latency p50 and p99 per job and target (log scale).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.harness import Metric
from bench.report import Results

LATENCY_UNIT = "µs"


def draw(results: Results, where: Path) -> None:
    relative(results, where / "relative.png")
    for section in results.sections:
        if results.values[section]:
            absolute(results, section, where / f"{section}.png")
    latency(results, where / "fio-latency.png")


def speedup(results: Results, section: str, metric: Metric, column: str) -> float | None:
    """How many times faster (or smaller) than gocryptfs `column` is on `metric`."""
    ratio = results.ratio(section, metric, column, "gocryptfs")
    if not ratio:
        return None
    return 1 / ratio if metric.lower_is_better else ratio


def relative(results: Results, path: Path) -> None:
    columns = [c for c in results.ordered_columns() if results.columns[c][1] in ("plain", "cagefs")]
    rows = [
        (section, metric)
        for section in results.sections
        for metric in results.values[section]
        if metric.unit != LATENCY_UNIT and "gocryptfs" in results.values[section][metric]
    ]
    if not rows or not columns:
        return
    height = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.32 * len(rows) * max(1, len(columns) / 2)))
    for i, column in enumerate(columns):
        values = [speedup(results, s, m, column) or 0 for s, m in rows]
        ys = [r + i * height for r in range(len(rows))]
        ax.barh(ys, values, height=height, label=results.columns[column][0])
        if results.columns[column][1] == "cagefs":
            for y, value in zip(ys, values, strict=True):
                if value:
                    ax.text(value, y, f" {value:.2f}", va="center", fontsize=6)
    ax.set_yticks([r + height * (len(columns) - 1) / 2 for r in range(len(rows))])
    ax.set_yticklabels([f"{m.label} ({m.unit})" for _, m in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=1)
    ax.set_xlabel("relative to gocryptfs (times faster or smaller; 1 = gocryptfs, right is better)")
    ax.set_title("cagefs and the plain directory against gocryptfs")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grouped_bars(ax: "plt.Axes", results: Results, section: str, metrics: list[Metric]) -> None:
    columns = [
        c
        for c in results.ordered_columns()
        if any(results.median(section, m, c) is not None for m in metrics)
    ]
    width = 0.8 / max(1, len(columns))
    for i, column in enumerate(columns):
        values = [results.median(section, m, column) or 0 for m in metrics]
        xs = [x + i * width for x in range(len(metrics))]
        ax.bar(xs, values, width=width, label=column)
    ax.set_xticks([x + width * (len(columns) - 1) / 2 for x in range(len(metrics))])
    ax.set_xticklabels([m.label for m in metrics], rotation=20, ha="right", fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def absolute(results: Results, section: str, path: Path) -> None:
    units: dict[str, list[Metric]] = {}
    for metric in results.values[section]:
        if metric.unit != LATENCY_UNIT:
            units.setdefault(metric.unit, []).append(metric)
    if not units:
        return
    fig, axes = plt.subplots(len(units), 1, figsize=(10, 3.6 * len(units)), squeeze=False)
    for ax, (unit, metrics) in zip(axes[:, 0], units.items(), strict=True):
        grouped_bars(ax, results, section, metrics)
        better = "lower" if metrics[0].lower_is_better else "higher"
        ax.set_ylabel(f"{unit} ({better} is better)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{results.sections[section]} (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency(results: Results, path: Path) -> None:
    metrics = [m for m in results.values.get("fio", {}) if m.unit == LATENCY_UNIT]
    if not metrics:
        return
    fig, ax = plt.subplots(figsize=(12, 5))
    grouped_bars(ax, results, "fio", metrics)
    ax.set_yscale("log")
    ax.set_ylabel("completion latency, µs (log; lower is better)")
    ax.set_title("fio completion latency, p50 and p99 (median of rounds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
