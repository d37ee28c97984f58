"""Reading run directories back: every folder under a root that holds a metrics.jsonl or a
status.json is a run; its config.yaml says what it was. Used by `plot` and `report`, which must
work on sweeps still in progress (partial curves) and name incomplete and diverged runs."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resexp.recorder import CONFIG, METRICS, STATUS, read_metrics, read_status


@dataclass
class Run:
    path: Path
    data: str
    family: str
    mode: str
    depth: int
    shortcut: str
    seed: int
    iterations: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"

    @property
    def step(self) -> int:
        return self.rows[-1]["step"] if self.rows else 0

    @property
    def diverged(self) -> bool:
        if self.status == "diverged":
            return True
        return any(not math.isfinite(r.get("train/loss", 0.0)) or r.get("diverged") for r in self.rows)

    @property
    def complete(self) -> bool:
        return self.status == "complete" and not self.diverged

    @property
    def state(self) -> str:
        if self.diverged:
            return f"diverged at iteration {self.step}"
        if self.complete:
            return "complete"
        return f"incomplete ({self.step}/{self.iterations} iterations)"

    @property
    def label(self) -> str:
        """The paper's names: plain-56, ResNet-56 (option B: ResNet-56B)."""
        if self.mode == "plain":
            return f"plain-{self.depth}"
        return f"ResNet-{self.depth}" + ("" if self.shortcut == "A" else self.shortcut)

    @property
    def group(self) -> tuple:
        """Runs that differ only in their seed."""
        return (self.data, self.family, self.mode, self.depth, "-" if self.mode == "plain" else self.shortcut)


def load_run(path: Path) -> Run | None:
    try:
        cfg = yaml.safe_load((path / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    m = cfg["model"]
    status = read_status(path) or {}
    return Run(path=path, data=cfg["data"]["name"], family=m["family"], mode=m["mode"], depth=int(m["depth"]),
               shortcut=m["shortcut"], seed=int(cfg["seed"]), iterations=int(cfg["schedule"]["iterations"]),
               rows=read_metrics(path), status=status.get("status", "running"))  # fmt: skip


def find_runs(root: Path) -> list[Run]:
    """Every run below `root` (or `root` itself), sorted by data, family, mode, depth, seed."""
    paths = {p.parent for pattern in (METRICS, STATUS) for p in Path(root).rglob(pattern)}
    runs = [r for r in (load_run(p) for p in paths) if r is not None]
    return sorted(runs, key=lambda r: (r.data, r.family, r.mode, r.depth, r.shortcut, r.seed))


def groups(runs: list[Run]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
