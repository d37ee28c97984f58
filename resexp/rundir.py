"""The run directory and its one owner: file names and formats, atomic writes, the lock, the
status, the run's identity (config and data), and reading runs back for plot and report.

    config.yaml            the resolved config: a re-run with other values is refused
    data.json              the dataset's name, file and fingerprint: a re-run on other data is refused
    environment.json       git commit, command, versions, device, speed settings (of the latest start)
    metrics.jsonl          one row per evaluation, appended and fsynced
    events.out.tfevents.*  TensorBoard scalars (written by resexp.recorder)
    last.pt, prev.pt       checkpoints (written by resexp.checkpoint through `atomic_write`)
    best.pt                the checkpoint of the lowest monitored error so far (a hard link: no copy)
    status.json            running | complete | interrupted | diverged | failed | imported, and the step reached
    .lock                  flock-ed by the process writing the run
    eval/<which>[+options].json   `resexp eval`'s numbers (resexp.evaluation); never a training file

A run made by `resexp import` (resexp.published) holds config.yaml, status.json (imported),
weights.pt (the published tensors under resexp's names) and provenance.json (the source, the file
and its SHA-256), and no metrics: it was not trained here.

Every file that is rewritten goes through `atomic_write` (a temporary file renamed over the old
one), so a reader or a crash never meets half a file; metrics.jsonl is only appended to, and the
one thing a crash can leave there, a torn last line, is repaired with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from resexp import identity
from resexp.errors import ForeignFolder, MetricsError, RunDirError

CONFIG, DATA, ENVIRONMENT, METRICS, STATUS = (
    "config.yaml",
    "data.json",
    "environment.json",
    "metrics.jsonl",
    "status.json",
)
LAST, PREVIOUS, BEST, LOCK = "last.pt", "prev.pt", "best.pt", ".lock"
WEIGHTS, PROVENANCE, EVALS = "weights.pt", "provenance.json", "eval"  # an imported run's; eval's folder
IMPORTED = "imported"  # the status of a run made by `resexp import`
ROW_KEYS = ("step", "epoch", "lr", "train/loss", "train/error")  # every metrics row has these
# Checkpoints of resexp 0.1 hold numpy's RNG state as an array: let weights_only load exactly that.
NUMPY_STATE = [
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
    (getattr(np, "_core", None) or np.core).multiarray._reconstruct,
]
SAYS = ("identity", "data", "metrics", "step")  # what a checkpoint says of itself besides its tensors
Warn = Callable[[str], None]


def atomic_write(
    path: Path,
    content: str | bytes | Callable[[BinaryIO], None],
    durable: bool = False,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Write `content` (text, bytes, or a function that writes into a binary file) to a temporary
    file and rename it over `path`. `durable` fsyncs the file and the folder (checkpoints,
    status); on any failure the temporary file is removed and `path` is left as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: Path, obj: Any, durable: bool = False) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n", durable)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class RunLock:
    """run_dir/.lock, held (filelock: flock on POSIX, a byte-range lock on Windows) by the process
    writing the run: a second process (another terminal, two sweep jobs that map to one directory)
    is refused, with the holder's pid. The operating system drops the lock when its process dies,
    so a lock left by a killed run, or one naming a pid that now belongs to another process, is
    simply taken over; the file is removed while the lock is still held, so the folder is left as
    it was found."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.lock: Any = None

    def __enter__(self) -> RunLock:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            try:
                holder = self.path.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise RunDirError(
                f"{self.path.parent} is being written by another resexp process (pid {holder}); "
                "two runs never share a directory"
            ) from None
        self.lock = lock
        try:  # the holder's pid, for the message another process gets
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        except PermissionError:  # Windows: the locked file cannot be written through another handle
            pass
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.lock is not None:
            with contextlib.suppress(OSError):  # Windows keeps a locked file until it is closed
                self.path.unlink(missing_ok=True)
            self.lock.release()
            self.lock = None


def config_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def parse_row(line: str, path: Path, number: int, after: int) -> dict[str, Any]:
    """One metrics.jsonl line as a row, or MetricsError naming the file and line."""

    def bad(reason: str) -> MetricsError:
        return MetricsError(f"{path} line {number} is not a metrics row ({reason}): fix or delete that line")

    try:
        row = json.loads(line)
    except ValueError:
        raise bad("not JSON") from None
    if not isinstance(row, dict):
        raise bad(f"a JSON {type(row).__name__}, not an object")
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise bad("no " + ", ".join(missing))
    if not isinstance(row["step"], int) or row["step"] <= after:
        raise bad(f"step {row['step']!r} does not follow step {after}")
    for key, value in row.items():
        if key not in ("step", "diverged") and not isinstance(value, (int, float)):
            raise bad(f"{key} is {value!r}, not a number")
    return row


@dataclass
class RunDir:
    """One run's directory: what is in it and every write to it."""

    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def lock(self) -> RunLock:
        return RunLock(self.path)

    # status
    def status(self) -> dict[str, Any]:
        status = read_json(self.file(STATUS))
        return status if isinstance(status, dict) else {}

    def set_status(self, status: str, step: int, iterations: int, **extra: Any) -> None:
        write_json(self.file(STATUS), {"status": status, "step": step, "iterations": iterations, **extra}, durable=True)

    def started(self) -> bool:
        """Whether a run has begun writing here (a checkpoint, metrics or a status)."""
        return any(self.file(name).exists() for name in (LAST, PREVIOUS, METRICS, STATUS))

    def missing(self) -> list[str]:
        """The files a started run must have and does not: a damaged run directory."""
        if not self.started():
            return []
        return [name for name in (CONFIG, DATA) if not self.file(name).exists()]

    # metrics
    def metrics(self, warn: Warn | None = None, repair: bool = False) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl. A torn last line (a crash mid-write) is left out with a
        warning (`repair`: it is to be removed, which `keep_metrics` does when the run resumes);
        any other bad line is a MetricsError."""
        path = self.file(METRICS)
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as e:
            raise MetricsError(f"{path} cannot be read ({e.strerror})") from None
        *lines, tail = text.split("\n")
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(lines, 1):
            rows.append(parse_row(line, path, number, rows[-1]["step"] if rows else 0))
        if tail:
            try:
                rows.append(parse_row(tail, path, len(lines) + 1, rows[-1]["step"] if rows else 0))
            except MetricsError:
                if warn is not None:
                    warn(
                        f"warning: {path} line {len(lines) + 1} was torn by a crash mid-write; "
                        + ("removing it" if repair else "ignoring it")
                    )
        return rows

    def metrics_digest(self, rows: list[dict[str, Any]] | None = None) -> str:
        """A hash of metrics.jsonl as written (or as `rows` would write it): a checkpoint keeps the
        one of the rows before it, so that rows changed since are found when the run resumes."""
        if rows is not None:
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        else:
            data = self.file(METRICS).read_bytes() if self.file(METRICS).exists() else b""
        return hashlib.sha1(data).hexdigest()[:16]

    def keep_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Make metrics.jsonl hold exactly `rows` (a resumed run drops what came after its
        checkpoint and a torn last line); untouched when it does already."""
        text = "".join(json.dumps(r) + "\n" for r in rows)
        path = self.file(METRICS)
        if path.exists() and path.read_bytes() != text.encode():
            atomic_write(path, text, durable=True)

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.file(METRICS), "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # identity
    def saved_config(self) -> dict[str, Any] | None:
        """The config.yaml of the run already here, None if there is none."""
        path = self.file(CONFIG)
        if not path.exists():
            return None
        try:
            saved = yaml.safe_load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: not UTF-8
            raise ForeignFolder(
                f"{path} cannot be read ({type(e).__name__}): it is not a config resexp wrote (move the folder away, "
                "or choose another folder)"
            ) from None
        if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
            raise ForeignFolder(
                f"{path} is not a resexp config: the folder holds files resexp did not write (move it away, or "
                "choose another folder)"
            )
        return saved

    def config_changes(self, cfg: Any) -> list[str]:
        """Identity fields whose values differ from those of the run already here (if any)."""
        saved = self.saved_config()
        if saved is None:
            return []
        return identity.differences(identity.of(saved), identity.of(cfg))

    def data_record(self) -> dict[str, Any] | None:
        """data.json: None when there is none; RunDirError when it is not a data record."""
        if not self.file(DATA).exists():
            return None
        record = read_json(self.file(DATA))
        if not isinstance(record, dict) or "fingerprint" not in record:
            raise RunDirError(
                f"{self.file(DATA)} is not a data record: restore it, or delete the folder to start again"
            )
        return record

    def checkpoint_says(self) -> dict[str, Any] | None:
        """What the run's newest readable checkpoint says of itself (its identity, data fingerprint,
        the digest of the metrics rows before it, its iteration); None when there is none."""
        for name in (LAST, PREVIOUS):
            says = checkpoint_says(self.file(name))
            if says is not None:
                return says
        return None

    def data_change(self, data: dict[str, Any], legacy: tuple[str, ...] = ()) -> str | None:
        """How the dataset of this command differs from the one the run was trained on, if it does:
        as data.json says, or where data.json is gone, as the run's checkpoint says."""
        before = self.data_record()
        if before is None:
            said = (self.checkpoint_says() or {}).get("data")
            before = None if said is None else {"source": "the data its checkpoint names", "fingerprint": said}
        if before is None or before.get("fingerprint") in (data.get("fingerprint"), *legacy):
            return None
        return (
            f"it was trained on {before.get('source')} (fingerprint {before.get('fingerprint')}), "
            f"this command reads {data.get('source')} (fingerprint {data.get('fingerprint')})"
        )

    def finished(self, iterations: int) -> bool:
        """Whether the run here is complete: its metrics reach `iterations` and it did not diverge."""
        try:
            rows = self.metrics()
        except RunDirError:
            return False
        last = rows[-1] if rows else {}
        return (
            bool(rows) and last["step"] >= iterations and not last.get("diverged") and math.isfinite(last["train/loss"])
        )

    def has_checkpoint(self) -> bool:
        return self.file(LAST).exists() or self.file(PREVIOUS).exists()

    def evals(self) -> dict[str, dict[str, Any]]:
        """`resexp eval`'s records in eval/, by name (latest, latest+ten_crop, ...); a file that is
        not one is left out."""
        out = {}
        for path in sorted(self.file(EVALS).glob("*.json")):
            record = read_json(path)
            if isinstance(record, dict) and isinstance(record.get("test/error"), (int, float)):
                out[path.stem] = record
        return out

    def imported(self) -> dict[str, Any] | None:
        """provenance.json of a run made by `resexp import`, None for a run trained here."""
        if self.status().get("status") != IMPORTED:
            return None
        record = read_json(self.file(PROVENANCE))
        return record if isinstance(record, dict) else {}


def owning_run(path: Path) -> Path | None:
    """The run folder that `path` (a file to write, or a folder) lies in or is, None when none:
    a folder with a config.yaml and a status.json or metrics.jsonl, found upward from `path`."""
    here = Path(os.path.abspath(path))
    for folder in (here, *here.parents):
        if (folder / CONFIG).is_file() and ((folder / STATUS).is_file() or (folder / METRICS).is_file()):
            return folder
    return None


def outside_runs(path: Path, what: str) -> None:
    """Refuse an output the user named when it falls in a run folder: only a run's own writers
    write there (`resexp export RUN RUN/last.pt` would replace the run's checkpoint)."""
    owner = owning_run(path)
    if owner is not None:
        raise RunDirError(
            f"{path} lies in the run folder {owner}, which only the run's own writers write: write {what} elsewhere"
        )


# --------------------------------------------------------------------------- reading runs back


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


def checkpoint_says(path: Path) -> dict[str, Any] | None:
    """What the checkpoint at `path` says of itself, read without reading its tensors
    (memory-mapped: milliseconds); None when it is missing, unreadable or not a checkpoint."""
    if not path.is_file():
        return None
    try:
        with torch.serialization.safe_globals(NUMPY_STATE):
            saved = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except Exception:  # truncated or foreign: resuming and analysing say why
        return None
    if isinstance(saved, dict) and isinstance(saved.get("step"), int):
        return {key: saved.get(key) for key in SAYS}
    return None


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
