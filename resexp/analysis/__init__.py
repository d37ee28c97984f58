"""`resexp analyze KIND FOLDER`: why residual learning works, measured on the user's own runs.

Kinds (one module each): responses (He et al. 2015, Fig. 7), gradients (gradient flow; Sec. 4.1),
lesion (Veit et al. 2016, Figs. 3 and 5), landscape (Li et al. 2018, Fig. 5), signal (signal
propagation: the lectures' explanations put to the numbers), paths (Veit et al. 2016, Fig. 6: the
gradient each path length carries). Each takes the nets of a folder of
runs, or of configs at initialisation (resexp.analysis.subjects), computes its numbers, and
returns a `Result` with its verdicts (resexp.analysis.verdict); the driver here writes
FOLDER/analysis/KIND.json (the numbers, one record per net), .png and .svg (KIND-init.* with
--at-init, KIND-config.* from a config; options away from their defaults named after a +, see
`stem`), and the CLI prints the table and the verdicts.
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

from resexp import identity
from resexp.analysis.subjects import Subject, from_configs, subjects
from resexp.analysis.verdict import Verdict, with_diverged
from resexp.errors import OptionError, UserError
from resexp.report import jsonable
from resexp.rundir import atomic_write

KINDS = ("responses", "gradients", "lesion", "landscape", "signal", "paths")
COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


MAX_GRID, MAX_DRAWS, MAX_SAMPLES = 101, 100, 1000


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
    samples: int = 16  # paths: paths sampled per length (every path where there are no more)

    def check(self) -> None:
        """Each option within its bounds; OptionError names the first that is not, as the CLI spells it."""
        import math
        import os

        for option, value, low, high in (
            ("--images", self.images, 1, math.inf),
            ("--draws", self.draws, 1, MAX_DRAWS),
            ("--samples", self.samples, 1, MAX_SAMPLES),
            ("--grid", self.grid, 2, MAX_GRID),
            ("--workers", self.workers, 1, os.cpu_count() or 1),
        ):
            if value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
                raise OptionError(f"{option} {value} must be at least {low:g}")
            if value > high:
                raise OptionError(f"{option} {value} must be at most {high:g}")
        if not (isinstance(self.span, (int, float)) and math.isfinite(self.span) and self.span > 0):
            raise OptionError(f"--span {self.span} must be a positive number")


@dataclass
class Result:
    kind: str
    records: list[dict[str, Any]]  # one per net (and per state, for gradients)
    columns: list[str]
    rows: list[list[str]]
    verdicts: list[Verdict]
    figure: Any = field(repr=False)  # a matplotlib Figure


# The options each kind reads (besides --at-init): an analysis's file name says those that differ
# from their defaults, so that analyses that can differ never share a file.
READS = {
    "responses": ("images", "per_channel", "nets", "seeds"),
    "gradients": ("images", "nets", "seeds"),
    "lesion": ("draws", "images", "seed", "nets", "seeds"),
    "landscape": ("grid", "span", "images", "seed", "nets", "seeds"),
    "signal": ("images", "nets", "seeds"),
    "paths": ("images", "samples", "seed", "nets", "seeds"),
}
STATES = ("", "-init", "-config")  # at the checkpoint, --at-init on runs, --at-init from a config
GROUPS = ("model", "data", "schedule")  # config groups whose choice changes the nets (experiment names the folder)


def state(kind: str, options: Options, configs: list[str] | None = None) -> str:
    """KIND, KIND-init or KIND-config: the weights analysed, without the options."""
    return kind + ("-config" if configs is not None else "-init" if options.at_init else "")


def stem(kind: str, options: Options, configs: list[str] | None = None) -> str:
    """An analysis's file name, without its suffix: its state, then `+key-value` for each option the
    kind reads that differs from its default and, from a config, each override typed that bears on
    the nets (not +experiment, which names the folder, nor where the data is): `lesion+nets-ResNet-56+seeds-0`,
    `signal-config+mode-residual+init-zero_gamma`. The same command again replaces its own files."""
    default = Options()
    items: list[tuple[str, str | None]] = []
    for key in READS[kind]:
        value = getattr(options, key)
        if value != getattr(default, key):
            items.append((key, ",".join(map(str, value)) if isinstance(value, tuple) else identity.shown(value)))
    items += typed(configs or [])
    return identity.tagged(state(kind, options, configs), items)


def files(folder: Path, kind: str, options: Options, configs: list[str] | None = None) -> list[Path]:
    """An analysis's numbers (.json) and figures (.png, .svg) under `folder`: its stem with each
    suffix added (a stem may hold a '.', as in span-0.5, which a suffix never replaces)."""
    name = stem(kind, options, configs)
    return [folder / f"{name}{suffix}" for suffix in (".json", ".png", ".svg")]


def typed(overrides: list[str]) -> list[tuple[str, str]]:
    """`key-value` for each override of a config that bears on its nets, sorted (the order typed
    does not matter): identity fields by their short names, group choices (model=imagenet) by the group's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    short = identity.short_names()
    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        value = override.input_line.partition("=")[2]
        if key in short:
            out.append((short[key], value))
        elif key in GROUPS:
            out.append((key, value))
    return sorted(out)


@dataclass(frozen=True)
class Stored:
    """One analysis written under FOLDER/analysis: its numbers (STEM.json) and figure (STEM.png)."""

    kind: str
    at_init: bool
    numbers: Path
    figure: Path

    @property
    def title(self) -> str:
        """lesion, signal at initialisation (from the config), landscape (span 0.5, nets plain-56)."""
        name = self.numbers.stem
        head, _, tag = name.partition(identity.ITEM)
        where = {"": "", "-init": " at initialisation", "-config": " at initialisation (from the config)"}
        title = self.kind + where[head[len(self.kind) :]]
        items = [item.replace(identity.VALUE, " ", 1) for item in tag.split(identity.ITEM)] if tag else []
        for char, code in reversed(identity.ESCAPED.items()):
            items = [item.replace(code, char) for item in items]
        return title + (f" ({', '.join(items)})" if items else "")


def stored(folder: Path) -> list[Stored]:
    """The analyses written under `folder`, in the order of KINDS (at the checkpoint, then --at-init
    on the runs, then from a config; each first without options, then by name): where they are is
    this package's business, not its readers'."""
    out = []
    analysis = folder / "analysis"
    for kind in KINDS:
        for suffix in STATES:
            head = kind + suffix
            found = [analysis / f"{head}.json"] + sorted(analysis.glob(f"{head}{identity.ITEM}*.json"))
            for numbers in found:
                if numbers.exists() and numbers.with_suffix(".png").exists():
                    out.append(Stored(kind, bool(suffix), numbers, numbers.with_suffix(".png")))
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
    diverged: list[dict] = []  # the runs left out because they diverged in training
    if configs is not None:
        nets, folder = from_configs(configs, device)
    else:
        assert folder is not None
        nets = subjects(folder, options.at_init, device, data_root, warn, options.nets, options.seeds, diverged)
    out = folder / "analysis"  # made when there is something to write: an interrupted analysis leaves nothing
    started = time.perf_counter()
    module = importlib.import_module(f"resexp.analysis.{kind}")
    result: Result = module.analyze(nets, options, out / state(kind, options, configs), progress)
    result.verdicts = with_diverged(result.verdicts, diverged)
    seconds = time.perf_counter() - started
    document = {
        "kind": kind,
        "options": asdict(options),
        "configs": configs,  # the overrides of the config analysed (None: a folder of runs)
        "device": str(device),
        "seconds": round(seconds, 1),
        "verdicts": [asdict(v) for v in result.verdicts],
        "records": result.records,
    }
    numbers, *figures = paths = files(out, kind, options, configs)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(numbers, json.dumps(jsonable(document), indent=1) + "\n")
    for path in figures:
        result.figure.savefig(path, dpi=130, bbox_inches="tight")
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
