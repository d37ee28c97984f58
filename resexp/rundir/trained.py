"""A finished run opened for use: its config (config.yaml, with the caller's test-time values),
its data (checked against the data it was trained on; runs of one sweep share one copy), its net
rebuilt and loaded with its latest, best or imported weights. And the loop every reader of several
runs goes through: each run done, a run that cannot be named with why and skipped, and when none
can, that is the one line of the error. `resexp eval` and the analyses read runs only through here."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import OmegaConf
from torch import nn

from resexp.config import Config, register, to_object, validate
from resexp.data import Data, DataSource, build_data, source
from resexp.device import pick_device, seed_everything
from resexp.errors import ConfigError, DataError, NothingToAnalyse, RunDirError, UserError, one_line
from resexp.nets.build import build_model, load_weights
from resexp.rundir import weights
from resexp.rundir.folder import CONFIG, RunDir
from resexp.rundir.read import Run

T = TypeVar("T")


def run_config(run_dir: Path, values: dict[str, Any] | None = None) -> Config:
    """The run's config.yaml as resexp's Config, with `values` (dotted keys: data.root, data.ten_crop,
    ...) set over it; checked as `resexp train` checks a config when any are set."""
    register()
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run_dir / CONFIG))
        cfg = to_object(merged)
    except Exception as e:  # a config.yaml written by another version, or edited by hand
        raise RunDirError(f"{run_dir / CONFIG} does not match resexp's config ({type(e).__name__})") from None
    if not values:
        return cfg
    merged = OmegaConf.structured(cfg)
    for key, value in values.items():
        try:
            OmegaConf.update(merged, key, value, merge=False)
        except Exception as e:  # a value of the wrong type for the schema
            raise ConfigError(f"{key}={value}: {one_line(e)}") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except Exception as e:
        raise ConfigError(one_line(e)) from None
    validate(cfg)
    return cfg


def checked_source(run: Run, cfg: Config, where: str) -> DataSource:
    """The run's data source, refused when it is not the data the run was trained on (`where`: the
    option that says where the data is, --data-root or data.root)."""
    try:
        data_source = source(cfg.data)
        found = data_source.identity()
    except DataError as e:
        raise DataError(
            f"{e} (the data of {run.path}, as its config.yaml names it; a relative data.root is "
            f"relative to where the run was trained: {where} says where the data is)"
        ) from None
    change = RunDir(run.path).data_change(found, data_source.legacy)
    if change:
        raise RunDirError(f"{run.path}: {change}; point {where} at the data it was trained on")
    return data_source


@functools.lru_cache(maxsize=4)
def cached_data(data_yaml: str, device: str) -> Data:
    """Runs of one sweep share their data: load it once (the evaluation sets do not depend on the
    seed; the training order does, and each run gets its own: `own_data`)."""
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config().data), OmegaConf.create(data_yaml)))
    return build_data(cfg, 0, torch.device(device))


def own_data(cfg: Config, device: torch.device) -> Data:
    """The run's data, its training batches in the order its own seed drew them."""
    shared = cached_data(OmegaConf.to_yaml(OmegaConf.structured(cfg.data)), str(device))
    return dataclasses.replace(shared, train=shared.train.with_seed(cfg.seed))


@dataclass
class Opened:
    """A run's net on a device, with its config, its data and the weights it holds (None: as initialised)."""

    run: Run
    cfg: Config
    model: nn.Module  # in eval mode
    data: Data
    data_source: DataSource
    trained: weights.Trained | None


def open_run(
    run: Run,
    device: torch.device | None,
    warn: Callable[[str], None],
    values: dict[str, Any] | None = None,
    which: str | None = "latest",
    doing: str = "reading",
    where: str = "data.root",
    missing: str = "has no checkpoint yet (it has not trained)",
) -> Opened:
    """Open `run`: its config (with `values`), its checked data, its net with the weights `which`
    names (latest, best), or as its run began (`which=None`: the same seed, the same initial weights),
    on `device` (None: the one its config, with `values`, names); `missing` says why a run without a
    checkpoint cannot be used."""
    cfg = run_config(run.path, values)
    device = pick_device(cfg.device) if device is None else device
    data_source = checked_source(run, cfg, where)
    data = own_data(cfg, device)
    seed_everything(cfg.seed)
    model = build_model(cfg, data.num_classes).to(device)
    trained = None
    if which is not None:
        trained = weights.of_run(run.path, warn, which, doing=doing)
        if trained is None:
            raise RunDirError(f"{run.path} {missing}")
        load_weights(model, trained.model, cfg.model, str(trained.file))
    return Opened(run, cfg, model.eval(), data, data_source, trained)


def each_run(
    runs: Iterable[Run], do: Callable[[Run], T], warn: Callable[[str], None], nothing: Callable[[list[str]], str]
) -> list[T]:
    """`do` on every run; a run it cannot be done on (a UserError or an OSError: its data moved, a
    file unreadable, an option its config refuses) is named with why and skipped, and the others go
    on. When none could be done, NothingToAnalyse with the line `nothing(skipped)` makes."""
    done, skipped = [], []
    for run in runs:
        try:
            done.append(do(run))
        except (UserError, OSError) as e:
            skipped.append(f"{run.path}: {one_line(e)}")
    if not done:
        raise NothingToAnalyse(nothing(skipped))
    for line in skipped:
        warn(f"skipping {line}")
    return done


def first_of(skipped: list[str]) -> str:
    """The first reason of several, and how many more there are."""
    return skipped[0] + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else "") if skipped else ""
