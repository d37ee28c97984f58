"""Reading runs back: one `Run` per run folder (identity, metrics rows, status, evals), checked as
every reader checks it, and the runs under a folder, with a warning for each one that cannot be
read (`readable_runs`) or an error for the first (`scan`, where the caller decides)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resexp import identity
from resexp.errors import ForeignFolder, RunDirError
from resexp.rundir.folder import BEST, CONFIG, EVALS, METRICS, STATUS, RunDir, Warn, checkpoint_says


@dataclass
class Run:
    """A run as plot, report and analyze see it: its identity (config.yaml, with the fields newer
    than the run at their defaults), its metrics and status. Complete, diverged or incomplete is
    read from the metrics, not from status.json, which only says why an incomplete run stopped."""

    path: Path
    identity: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    status: str = ""
    provenance: dict[str, Any] | None = None  # provenance.json of an imported run (resexp import)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # resexp eval's records, by name

    @property
    def imported(self) -> bool:
        return self.provenance is not None

    @property
    def data(self) -> str:
        return str(self.identity["data.name"])

    @property
    def family(self) -> str:
        return str(self.identity["model.family"])

    @property
    def mode(self) -> str:
        return str(self.identity["model.mode"])

    @property
    def depth(self) -> int:
        return int(self.identity["model.depth"])

    @property
    def shortcut(self) -> str:
        return "-" if self.mode == "plain" else str(self.identity["model.shortcut"])

    @property
    def seed(self) -> int:
        return int(self.identity["seed"])

    @property
    def iterations(self) -> int:
        return int(self.identity["schedule.iterations"])

    @property
    def step(self) -> int:
        return self.rows[-1]["step"] if self.rows else 0

    @property
    def diverged(self) -> bool:
        return self.status == "diverged" or any(
            not math.isfinite(r["train/loss"]) or r.get("diverged") for r in self.rows
        )

    @property
    def complete(self) -> bool:
        """Finished as configured: its last row at its iteration count, and not diverged."""
        return self.step >= self.iterations and not self.diverged

    @property
    def state(self) -> str:
        if self.imported:
            return f"imported ({self.provenance.get('source', '?')}: {self.provenance.get('file', '?')})"
        if self.diverged:
            return f"diverged at iteration {self.step}"
        if self.complete:
            return "complete"
        why = f", {self.status}" if self.status in ("interrupted", "failed") else ""
        return f"incomplete ({self.step}/{self.iterations} iterations{why})"

    @property
    def label(self) -> str:
        """The paper's names: plain-56, ResNet-56 (option B: ResNet-56B)."""
        if self.mode == "plain":
            return f"plain-{self.depth}"
        return f"ResNet-{self.depth}" + ("" if self.shortcut == "A" else self.shortcut)

    @property
    def setting(self) -> tuple:
        """Everything that defines the run except the seed (a plain net has no shortcut option):
        runs that share it are seeds of one experiment."""
        skip = {"seed"} | ({"model.shortcut"} if self.mode == "plain" else set())
        return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in self.identity.items() if k not in skip)


def load_run(path: Path, warn: Warn) -> Run:
    """A run directory read back; RunDirError when it cannot be read, or its config.yaml does not
    describe it (edited after the run wrote it, or the folder renamed)."""
    run_dir = RunDir(path)
    cfg = run_dir.saved_config()
    if cfg is None:
        raise RunDirError(f"{path} has no {CONFIG}")
    try:
        values = identity.of(cfg)
        int(values["model.depth"]), int(values["seed"]), int(values["schedule.iterations"])
    except (TypeError, ValueError) as e:
        raise RunDirError(f"{path / CONFIG} is not a resexp config ({e})") from None
    status = run_dir.status()
    written = status.get("identity")
    if written is not None and written != identity.digest(values):
        raise RunDirError(
            f"{path / CONFIG} and {STATUS} disagree about the run (one was changed after the run wrote it): "
            "restore it, or run the same command again to check the run against its checkpoint"
        )
    wrong = identity.disagreements(path.name, values)
    if wrong:
        raise RunDirError(f"{path / CONFIG} does not describe the run its folder names ({'; '.join(wrong)})")
    rows = run_dir.metrics(warn)
    agreement(run_dir, values, rows)
    return Run(
        path=path,
        identity=values,
        rows=rows,
        status=str(status.get("status", "")),
        provenance=run_dir.imported(),
        evals=current_evals(run_dir, warn),
    )


def current_evals(run_dir: RunDir, warn: Warn) -> dict[str, dict[str, Any]]:
    """`resexp eval`'s records of the weights the run holds now: a record of an earlier checkpoint
    (the run went on training since) is left out with a warning, never shown as the run's."""
    out = {}
    now: dict[str, int | None] = {}
    for name, record in run_dir.evals().items():
        which = name.partition(identity.ITEM)[0]
        if which not in now:
            file = run_dir.file(BEST) if which == "best" else None
            says = checkpoint_says(file) if file is not None else run_dir.checkpoint_says()
            now[which] = None if says is None else says["step"]
        made = (record.get("checkpoint") or {}).get("step")
        if now[which] is not None and made != now[which]:
            warn(
                f"warning: leaving out {run_dir.file(EVALS) / name}.json: it evaluated iteration {made}, and the run's "
                f"{which} checkpoint is at {now[which]} now (resexp eval again)"
            )
            continue
        out[name] = record
    return out


def agreement(run_dir: RunDir, values: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The run's files agree with its checkpoint, as a resumed run checks them: config.yaml says
    what the checkpoint was trained as, and metrics.jsonl holds the rows it was saved after. A run
    that train would refuse is refused by every reader (report, plot, analyze, eval, export)."""
    says = run_dir.checkpoint_says()
    if says is None:  # not trained yet, or imported: nothing to hold its files to
        return
    if isinstance(says.get("identity"), dict):
        wrong = identity.differences(identity.of(says["identity"]), values)
        if wrong:
            raise RunDirError(
                f"{run_dir.file(CONFIG)} says another run than its checkpoint was trained as ({wrong[0]}): it was "
                "changed after the run wrote it; restore it"
            )
    written = says.get("metrics")
    if written is not None and written != run_dir.metrics_digest([r for r in rows if r["step"] <= says["step"]]):
        what = "is gone" if not run_dir.file(METRICS).exists() else "was changed after the run wrote it"
        raise RunDirError(
            f"{run_dir.path}: its checkpoint is at iteration {says['step']} but {METRICS} {what}: restore it"
        )


def hidden(path: Path, root: Path) -> bool:
    """Whether `path` lies in a hidden folder below `root` (an import's staging folder, .git, ...):
    never a run to read."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_runs(root: Path, warn: Warn) -> list[Run]:
    """Every run below `root` (or `root` itself), sorted by data, family, mode, depth, seed; a
    run that cannot be read is left out with one warning naming it."""
    return scan(root, warn)[0]


def scan(root: Path, warn: Warn) -> tuple[list[Run], int]:
    """The runs below `root` that can be read (as `find_runs`), and how many were left out."""
    root = Path(root)
    paths = {p.parent for name in (METRICS, STATUS) for p in root.rglob(name) if not hidden(p.parent, root)}
    runs, skipped = [], 0
    for path in sorted(paths):
        try:
            runs.append(load_run(path, warn))
            continue
        except ForeignFolder as e:
            warn(f"warning: skipping {path}, not a run of resexp's: {e}")
        except RunDirError as e:
            warn(f"warning: skipping a malformed run: {e}")
        except OSError as e:
            warn(f"warning: skipping a run that cannot be read: {path}: {e.strerror}")
        skipped += 1
    runs = sorted(runs, key=lambda r: (r.data, r.family, r.mode, r.depth, r.shortcut, r.seed, str(r.path)))
    return runs, skipped


def readable_runs(root: Path, warn: Warn) -> list[Run]:
    """The runs below `root`; none is one line, which says whether there were runs it could not read."""
    if not Path(root).is_dir():
        raise RunDirError(f"{root} is not a folder")
    runs, skipped = scan(root, warn)
    if not runs:
        if skipped:
            raise RunDirError(f"no run under {root} can be read: {skipped} skipped, each named above")
        raise RunDirError(f"no runs (folders with {CONFIG} and {METRICS} or {STATUS}) under {root}")
    return runs
