"""`resexp plot`: the paper's figure from metrics.jsonl files (He et al. 2015, Figures 1, 4, 6):
x = iterations, y = error (%), thin dashed = training error, bold = test error, one colour per
depth; plain nets in the left panel, residual nets in the right. Several seeds of a run give a
mean line and a shaded band (min to max); runs still in progress give partial curves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from resexp.errors import UserError
from resexp.rundir.experiments import experiments, settings_of
from resexp.rundir.folder import outside_runs
from resexp.rundir.read import Run, readable_runs

COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def curve(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps and the mean, min and max over seeds of `key`, at every step some seed has reached."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for row in run.rows:
            if key in row and np.isfinite(row[key]):
                by_step.setdefault(row["step"], []).append(row[key])
    steps = np.array(sorted(by_step))
    values = [np.array(by_step[s]) for s in steps]
    return (
        steps,
        np.array([v.mean() for v in values]),
        np.array([v.min() for v in values]),
        np.array([v.max() for v in values]),
    )


def figure(runs: list[Run], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    groups = experiments(runs)
    settings = settings_of(groups)
    lines = sorted({(members[0].depth, settings[key]) for key, members in groups.items()})
    colour = {line: COLOURS[i % len(COLOURS)] for i, line in enumerate(lines)}
    top = 0.0
    for ax, mode in zip(axes, ("plain", "residual"), strict=True):
        mine = [(key, members) for key, members in groups.items() if members[0].mode == mode]
        for key, members in sorted(mine, key=lambda km: (km[1][0].depth, settings[km[0]])):
            label = members[0].label + ("" if settings[key] == "-" else f" {settings[key]}")
            label += f" ({len(members)} seeds)" if len(members) > 1 else ""
            for metric, style in (("train/error", dict(lw=1, ls="--")), ("test/error", dict(lw=2.2, ls="-"))):
                steps, mean, low, high = curve(members, metric)
                if not len(steps):
                    continue
                c = colour[(members[0].depth, settings[key])]
                ax.plot(steps, mean, color=c, label=label if metric == "test/error" else None, **style)
                if len(members) > 1:
                    ax.fill_between(steps, low, high, color=c, alpha=0.15, lw=0)
                top = max(top, float(np.nanmax(high)))
        ax.set_title(f"{mode} ({title})")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=9)
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(0, min(100.0, top * 1.05 + 1))
    fig.text(0.5, -0.01, "dashed: training error, bold: test error", ha="center", fontsize=9)
    fig.tight_layout()
    return fig


def plot(runs: list[Run], out_stem: Path) -> list[Path]:
    """Write one figure per data set as <out_stem>[_<data>].png and .svg; returns the files."""
    datasets = sorted({r.data for r in runs})
    written = []
    for data in datasets:
        mine = [r for r in runs if r.data == data]
        stem = out_stem if len(datasets) == 1 else out_stem.with_name(f"{out_stem.name}_{data}")
        stem.parent.mkdir(parents=True, exist_ok=True)
        fig = figure(mine, data)
        for suffix in (".png", ".svg"):
            path = stem.with_suffix(suffix)
            fig.savefig(path, dpi=130, bbox_inches="tight")
            written.append(path)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return written


def plot_folder(folder: Path, out: Path | None, warn: Callable[[str], None]) -> list[Path]:
    """`resexp plot FOLDER [--out OUT]`: the figure of the trained runs under `folder` (OUT, not
    inside a run folder; default FOLDER/curves); the files written."""
    if out is not None:
        outside_runs(out, "the figure")
    trained = [run for run in readable_runs(folder, warn) if run.rows]
    if not trained:
        raise UserError(f"the runs under {folder} have no curves: they were imported, not trained here")
    return plot(trained, out if out is not None else folder / "curves")
