"""What every analysis shares, and what each is: a module of resexp.analysis with

    COLUMNS                                  the table's header
    measure(net, options, base, progress)    the records of one net (a list: gradients gives one at
                                             initialisation and one at the checkpoint); `base` is where
                                             a kind may keep partial work (landscape's chunks)
    rows(records)                            the table's rows
    verdicts(records)                        the claims, each agrees, does not agree or cannot decide
    figure(nets, records)                    a matplotlib figure

The driver (resexp.analysis.driver) owns the loop over the nets, the verdicts' missing runs and the
files. Here: the options, the result, one colour per net, and matplotlib without a display."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resexp.analysis.subjects import Subject
from resexp.analysis.verdict import Verdict
from resexp.errors import OptionError, within

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

        within(
            ("--images", self.images, 1, math.inf),
            ("--draws", self.draws, 1, MAX_DRAWS),
            ("--samples", self.samples, 1, MAX_SAMPLES),
            ("--grid", self.grid, 2, MAX_GRID),
            ("--workers", self.workers, 1, os.cpu_count() or 1),
        )
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
