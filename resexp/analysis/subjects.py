"""The nets an analysis looks at: every run under a folder, rebuilt from its config.yaml with the
weights of its latest checkpoint, or freshly initialised exactly as the run began (--at-init), with
the run's own data (its own training order: the first batch is the one its training saw). A
diverged run is left out with a line; an unfinished one is analysed at its latest checkpoint and
marked so. Each net carries the key of what it was built from (the checkpoint's file, iteration and
SHA-256), which the analysis records and which a computation in chunks checks before it reuses any;
a run that cannot be analysed (its data moved, its files unreadable) is named and skipped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resexp import identity
from resexp.analysis import convergence
from resexp.analysis.convergence import TrainingState
from resexp.config import Config
from resexp.data import Data
from resexp.device import seed_everything
from resexp.nets.build import build_model
from resexp.rundir.read import Run, scan
from resexp.rundir.trained import each_run, first_of, open_run, own_data


@dataclass
class Subject:
    """One run's net, ready to be analysed."""

    run: Run
    cfg: Config
    model: nn.Module  # in eval mode, on `device`
    data: Data
    device: torch.device
    state: str  # "complete (400)", "unfinished (120 of 400)", "initialised"
    training: TrainingState  # what the verdicts say they were judged on (resexp.analysis.convergence)
    checkpoint: dict | None = None  # {"file": "last.pt", "step": 400, "sha256": ...}; None when initialised
    settings: str = "-"  # what tells this net apart from the others analysed with it (norm=none init=fixup)

    @property
    def net(self) -> str:
        """The paper's name, and the settings that tell it apart: plain-56, plain-56 (norm=none)."""
        return self.run.label + ("" if self.settings == "-" else f" ({self.settings})")

    @property
    def name(self) -> str:
        """The paper's name and the seed: ResNet-56 s0, plain-20 (norm=none) s2."""
        return f"{self.net} s{self.run.seed}"

    def initial_model(self) -> nn.Module:
        """The net as this run began: the same seed, the same initial weights."""
        seed_everything(self.cfg.seed)
        return build_model(self.cfg, self.data.num_classes).to(self.device).eval()

    def first_batch(self, images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The run's own first training batch, as its training saw it (cut to `images` when given)."""
        x, y = next(iter(self.data.train.batches(0)))
        return (x, y) if images is None else (x[:images], y[:images])

    def record(self) -> dict:
        """What identifies this net in an analysis's JSON."""
        r = self.run
        return {
            "net": self.net,
            "settings": self.settings,
            "mode": r.mode,
            "depth": r.depth,
            "shortcut": r.shortcut,
            "seed": r.seed,
            "run": str(r.path),
            "state": self.state,
            "training": self.training.record(),
            "design": design_of(self.cfg),
            "lr": self.cfg.optim.lr,
            "checkpoint": self.checkpoint,
        }

    def initial(self) -> Subject:
        """This net as its run began (for an imported net: a fresh initialisation of its architecture)."""
        training = self.training if self.training.initialised else convergence.at_init(self.run)
        return dataclasses.replace(
            self, model=self.initial_model(), state="initialised", training=training, checkpoint=None
        )

    @property
    def key(self) -> str:
        """What the net was built from: the checkpoint's SHA-256, or the initialisation of its config."""
        if self.checkpoint is not None:
            return self.checkpoint["sha256"]
        return "init-" + identity.digest(identity.of(self.cfg))


PAPER_DESIGN = {"norm": "batch", "init": "he", "block": "post", "body": "basic"}  # the 2015 nets


def design_of(cfg: Config) -> dict[str, str]:
    """The design switches a verdict is judged per (the 2015 nets: batch, he, post, basic)."""
    m = cfg.model
    return {"norm": str(m.norm), "init": str(m.init), "block": str(m.block), "body": str(m.body or "basic")}


def design_of_run(run: Run) -> dict[str, str]:
    """design_of, read from a run's identity (config.yaml) without building its config."""
    return {key: str(run.identity.get(f"model.{key}") or paper) for key, paper in PAPER_DESIGN.items()}


def load(
    run: Run, at_init: bool, device: torch.device, data_root: str | None, warn: Callable[[str], None] = print
) -> Subject:
    values = {"data.root": data_root} if data_root is not None else None
    missing = "has no checkpoint yet (analyse it --at-init, or train it first)"
    opened = open_run(run, device, warn, values, None if at_init else "latest", "analysing", "--data-root", missing)
    if at_init:
        return Subject(run, opened.cfg, opened.model, opened.data, device, "initialised", convergence.at_init(run))
    trained = opened.trained
    step = trained.step
    if run.imported:
        state = f"imported ({run.provenance.get('source', '?')})"
    else:
        state = f"complete ({step})" if step >= run.iterations else f"unfinished ({step} of {run.iterations})"
    key = {"file": trained.file.name, "step": step, "sha256": trained.sha256}
    training = convergence.of_run(run, step)
    return Subject(run, opened.cfg, opened.model, opened.data, device, state, training, key)


def subjects(
    folder: Path,
    at_init: bool,
    device: torch.device,
    data_root: str | None,
    warn: Callable[[str], None],
    nets: tuple[str, ...] = (),
    seeds: tuple[int, ...] = (),
    diverged: list[dict] | None = None,
) -> list[Subject]:
    """Every analysable run under `folder` (of the given nets and seeds), in the order of
    `find_runs`; each run that cannot be analysed is named with why, and when none can, that is
    the one line of a NothingToAnalyse. The runs left out because they diverged in training are
    added to `diverged` (net, mode, seed, design, state), for the verdicts about their design."""
    found, unreadable = scan(folder, warn)
    chosen = [r for r in found if not (nets and r.label not in nets) and not (seeds and r.seed not in seeds)]
    diverged_runs = [r for r in chosen if r.diverged and not at_init]
    if diverged is not None:
        diverged += [
            {"net": r.label, "mode": r.mode, "seed": r.seed, "design": design_of_run(r), "state": r.state}
            for r in diverged_runs
        ]

    def nothing(skipped: list[str]) -> str:
        skipped = [f"{r.path}: {r.state}" for r in diverged_runs] + skipped
        asked = " ".join(f"--{k} {','.join(map(str, v))}" for k, v in (("nets", nets), ("seeds", seeds)) if v)
        why = f": {first_of(skipped)}" if skipped else ""
        if not found and unreadable:
            why = f": {unreadable} run(s) there cannot be read, each named above"
        if asked and not skipped and found:  # the nets or seeds asked for are not there: say which are
            there = sorted({r.label for r in found}, key=lambda n: (n.startswith("ResNet"), len(n), n))
            seeds_there = ", ".join(map(str, sorted({r.seed for r in found})))
            why = f": the runs there are of {', '.join(there)}, seeds {seeds_there}"
        return f"no run under {folder}{' matching ' + asked if asked else ''} can be analysed{why}"

    usable = [r for r in chosen if r not in diverged_runs]
    out = each_run(usable, lambda run: load(run, at_init, device, data_root, warn), warn, nothing)
    for r in diverged_runs:
        warn(f"skipping {r.path}: {r.state}")
    return named(out)


def from_configs(overrides: list[str], device: torch.device) -> tuple[list[Subject], Path]:
    """The nets of a config or a sweep (the overrides of `resexp train [-m]`), freshly initialised
    as their runs would begin, with their data; and the folder their analyses go to (runs/<name>)."""
    from resexp.launch.jobs import plan

    jobs = plan(overrides, multirun=True)  # comma lists expand as a sweep's do; one config is a sweep of one
    out = []
    for job in jobs:
        data = own_data(job.config, device)
        seed_everything(job.config.seed)
        model = build_model(job.config, data.num_classes).to(device).eval()
        run = Run(path=job.run_dir, identity=identity.of(job.config))
        training = TrainingState(convergence.INITIALISED, "at initialisation (from the config)")
        out.append(Subject(run, job.config, model, data, device, "initialised", training))
    return named(out), jobs[0].sweep_dir or jobs[0].run_dir.parent


def named(nets: list[Subject]) -> list[Subject]:
    """Each net's settings: the fields that differ between the nets of one analysis."""
    from resexp.rundir.experiments import experiments, settings_of

    settings = settings_of(experiments([net.run for net in nets]))
    return [dataclasses.replace(net, settings=settings[net.run.setting]) for net in nets]
