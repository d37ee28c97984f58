"""The nets an analysis looks at: every run under a folder, rebuilt from its config.yaml with the
weights of its latest checkpoint, or freshly initialised exactly as the run began (--at-init), with
the run's own data. A diverged run is left out with a line; an unfinished one is analysed at its
latest checkpoint and marked so."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from resexp import checkpoint
from resexp.config import Config, register, to_object
from resexp.data import Data, build_data, source
from resexp.errors import DataError, RunDirError
from resexp.rundir import CONFIG, Run, RunDir, find_runs
from resexp.train import build_model, seed_everything


@dataclass
class Subject:
    """One run's net, ready to be analysed."""

    run: Run
    cfg: Config
    model: nn.Module  # in eval mode, on `device`
    data: Data
    device: torch.device
    state: str  # "complete (400)", "unfinished (120 of 400)", "initialised"

    @property
    def name(self) -> str:
        """The paper's name and the seed: ResNet-56 s0, plain-20 s2."""
        return f"{self.run.label} s{self.run.seed}"

    def initial_model(self) -> nn.Module:
        """The net as this run began: the same seed, the same initial weights."""
        seed_everything(self.cfg.seed)
        return build_model(self.cfg, self.data.num_classes).to(self.device).eval()

    def record(self) -> dict:
        """What identifies this net in an analysis's JSON."""
        r = self.run
        return {
            "net": r.label,
            "mode": r.mode,
            "depth": r.depth,
            "shortcut": r.shortcut,
            "seed": r.seed,
            "run": str(r.path),
            "state": self.state,
        }


def run_config(run_dir: Path, data_root: str | None) -> Config:
    register()
    schema = OmegaConf.structured(Config)
    try:
        cfg = to_object(OmegaConf.merge(schema, OmegaConf.load(run_dir / CONFIG)))
    except Exception as e:  # a config.yaml written by another version, or edited by hand
        raise RunDirError(f"{run_dir / CONFIG} does not match resexp's config ({type(e).__name__})") from None
    if data_root is not None:
        cfg.data = replace(cfg.data, root=data_root)
    return cfg


@functools.lru_cache(maxsize=4)
def cached_data(data_yaml: str, device: str) -> Data:
    """Runs of one sweep share their data: load it once (the evaluation sets do not depend on the
    seed; the training stream's order does, and analyses use its first batch only)."""
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config().data), OmegaConf.create(data_yaml)))
    return build_data(cfg, 0, torch.device(device))


def load(run: Run, at_init: bool, device: torch.device, data_root: str | None) -> Subject:
    cfg = run_config(run.path, data_root)
    try:
        identity = source(cfg.data).identity()
    except DataError as e:
        raise DataError(
            f"{e} (the data of {run.path}, as its config.yaml names it; a relative data.root is "
            "relative to where the run was trained: --data-root says where the data is)"
        ) from None
    change = RunDir(run.path).data_change(identity)
    if change:
        raise RunDirError(f"{run.path}: {change}; point --data-root at the data it was trained on")
    data = cached_data(OmegaConf.to_yaml(OmegaConf.structured(cfg.data)), str(device))
    seed_everything(cfg.seed)
    model = build_model(cfg, data.num_classes).to(device)
    if at_init:
        state = "initialised"
    else:
        saved = checkpoint.load_latest(RunDir(run.path), lambda text: None)
        if saved is None:
            raise RunDirError(f"{run.path} has no checkpoint yet (analyse it --at-init, or train it first)")
        model.load_state_dict(saved["model"])
        step = saved["step"]
        state = f"complete ({step})" if run.complete else f"unfinished ({step} of {run.iterations})"
    return Subject(run, cfg, model.eval(), data, device, state)


def subjects(
    folder: Path,
    at_init: bool,
    device: torch.device,
    data_root: str | None,
    warn: Callable[[str], None],
    nets: tuple[str, ...] = (),
    seeds: tuple[int, ...] = (),
) -> list[Subject]:
    """Every analysable run under `folder` (of the given nets and seeds), in the order of `find_runs`."""
    out = []
    for run in find_runs(folder, warn):
        if (nets and run.label not in nets) or (seeds and run.seed not in seeds):
            continue
        if run.diverged and not at_init:
            warn(f"skipping {run.path}: {run.state}")
            continue
        try:
            out.append(load(run, at_init, device, data_root))
        except RunDirError as e:
            warn(f"skipping {run.path}: {e}")
    return out
