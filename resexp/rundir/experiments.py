"""Runs grouped into experiments (every field that changes a result but the seed), the settings that
tell experiments apart, mean and std over seeds, and JSON-safe values: what report, plot, eval and
the analyses share when they read runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from resexp import identity
from resexp.rundir.read import Run

NAMED = ("data.name", "model.family", "model.mode", "model.depth", "model.shortcut", "seed")


# (data, family, mode, depth, shortcut) -> (test error %, source). Plain nets have no printed
# numbers; the two plain CIFAR values are read off Figure 6.


def experiments(runs: list[Run], warn: Callable[[str], None] = lambda text: None) -> dict[tuple, list[Run]]:
    """Runs that differ only in their seed, by their setting (identity minus seed). Two folders
    holding the same run (same identity and seed: a copy) count once, with a warning."""
    out: dict[tuple, dict[int, Run]] = {}
    for run in runs:
        seeds = out.setdefault(run.setting, {})
        other = seeds.get(run.seed)
        if other is not None:
            keep, drop = (other, run) if other.step >= run.step else (run, other)
            warn(f"warning: {drop.path} holds the same run as {keep.path} (same config and seed): counted once")
            seeds[run.seed] = keep
        else:
            seeds[run.seed] = run
    return {key: [seeds[s] for s in sorted(seeds)] for key, seeds in out.items()}


def settings_of(groups: dict[tuple, list[Run]]) -> dict[tuple, str]:
    """What tells an experiment apart beyond its net's name: the identity fields whose values
    differ between the experiments of the report, as a folder name shows them (lr=0.05)."""
    values = {key: dict(key) for key in groups}
    keys = [
        k
        for k in identity.identity_keys()
        if k not in NAMED and len({identity.shown(v.get(k)) for v in values.values()}) > 1
    ]
    names = identity.short_names()
    return {key: " ".join(f"{names[k]}={identity.shown(values[key].get(k))}" for k in keys) or "-" for key in groups}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value: the noise is unknown)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def jsonable(value: Any) -> Any:
    """NaN and infinities as null (JSON has no NaN), tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value
