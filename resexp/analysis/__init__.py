"""`resexp analyze KIND FOLDER`: why residual learning works, measured on the user's own runs.

Kinds (one module each): responses (He et al. 2015, Fig. 7), gradients (gradient flow; Sec. 4.1),
lesion (Veit et al. 2016, Figs. 3 and 5), landscape (Li et al. 2018, Fig. 5), signal (signal
propagation: the lectures' explanations put to the numbers). Each takes the nets of a folder of
runs, or of configs at initialisation (resexp.analysis.subjects), computes its numbers, and
returns a `Result` with its verdicts (resexp.analysis.verdict); the driver here writes
FOLDER/analysis/KIND.json (the numbers, one record per net), .png and .svg (KIND-init.* with
--at-init), and the CLI prints the table and the verdicts.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from resexp.analysis.subjects import Subject, from_configs, subjects
from resexp.analysis.verdict import Verdict
from resexp.errors import UserError
from resexp.report import jsonable
from resexp.rundir import atomic_write

KINDS = ("responses", "gradients", "lesion", "landscape", "signal")
COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


@dataclass
class Options:
    """Every analysis option; each kind reads the ones it needs (the CLI documents which)."""

    at_init: bool = False
    images: int | None = None  # images per evaluation (None: the kind's default)
    draws: int = 3  # lesion: random draws per number of removed blocks
    grid: int = 21  # landscape: points per axis of the 2D grid (and 2 * grid - 1 on the 1D line)
    span: float = 1.0  # landscape: the grid covers [-span, span] along each direction
    workers: int = 1  # landscape: processes computing chunks side by side (CPU)
    seed: int = 0  # landscape directions, lesion draws
    nets: tuple[str, ...] = ()  # only these nets, by the paper's names (plain-56, ResNet-56); () = all
    seeds: tuple[int, ...] = ()  # only runs of these seeds; () = all
    per_channel: bool = False  # responses: the std per channel, averaged (the paper does not say which)


@dataclass
class Result:
    kind: str
    records: list[dict[str, Any]]  # one per net (and per state, for gradients)
    columns: list[str]
    rows: list[list[str]]
    verdicts: list[Verdict]
    figure: Any = field(repr=False)  # a matplotlib Figure


def stem(kind: str, options: Options) -> str:
    return f"{kind}-init" if options.at_init else kind


@dataclass(frozen=True)
class Stored:
    """One analysis written under FOLDER/analysis: its numbers (KIND.json) and figure (KIND.png)."""

    kind: str
    at_init: bool
    numbers: Path
    figure: Path


def stored(folder: Path) -> list[Stored]:
    """The analyses written under `folder`, in the order of KINDS (each checkpoint one before its
    --at-init one): where they are is this package's business, not its readers'."""
    out = []
    for kind in KINDS:
        for at_init in (False, True):
            base = folder / "analysis" / stem(kind, Options(at_init=at_init))
            if base.with_suffix(".json").exists() and base.with_suffix(".png").exists():
                out.append(Stored(kind, at_init, base.with_suffix(".json"), base.with_suffix(".png")))
    return out


def analyze(
    kind: str,
    folder: Path | None,
    options: Options,
    device: torch.device,
    data_root: str | None,
    warn: Callable[[str], None],
    progress: Callable[[str], None],
    configs: list[str] | None = None,
) -> tuple[Result, list[Path]]:
    """Run one analysis on the runs under `folder`, or (at initialisation) on the nets of
    `configs`, the overrides of a config or a sweep (written under its runs/<name>/); returns its
    result and the files written."""
    if kind not in KINDS:
        raise UserError(f"{kind!r} is not an analysis: choose one of {', '.join(KINDS)}")
    if configs is not None:
        nets, folder = from_configs(configs, device)
    else:
        assert folder is not None
        nets = subjects(folder, options.at_init, device, data_root, warn, options.nets, options.seeds)
    out = folder / "analysis"  # made when there is something to write: an interrupted analysis leaves nothing
    started = time.perf_counter()
    module = importlib.import_module(f"resexp.analysis.{kind}")
    result: Result = module.analyze(nets, options, out / stem(kind, options), progress)
    seconds = time.perf_counter() - started
    document = {
        "kind": kind,
        "options": asdict(options),
        "device": str(device),
        "seconds": round(seconds, 1),
        "verdicts": [asdict(v) for v in result.verdicts],
        "records": result.records,
    }
    base = out / stem(kind, options)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(base.with_suffix(".json"), json.dumps(jsonable(document), indent=1) + "\n")
    paths = [base.with_suffix(".json")]
    for suffix in (".png", ".svg"):
        result.figure.savefig(base.with_suffix(suffix), dpi=130, bbox_inches="tight")
        paths.append(base.with_suffix(suffix))
    import matplotlib.pyplot as plt

    plt.close(result.figure)
    return result, paths


def colour_of(subjects_: list[Subject]) -> dict[str, str]:
    """One colour per net (as records name it: its settings included), stable across analyses."""
    keys = sorted(
        {s.net for s in subjects_}, key=lambda n: next((s.run.mode, s.run.depth, n) for s in subjects_ if s.net == n)
    )
    return {k: COLOURS[i % len(COLOURS)] for i, k in enumerate(keys)}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
