"""The run directory and its one writer: file names and formats, atomic writes, the lock, the
status, the run's identity (config and data). Reading runs back is resexp.rundir.read's.

    config.yaml            the resolved config: a re-run with other values is refused
    data.json              the dataset's name, file and fingerprint: a re-run on other data is refused
    environment.json       git commit, command, versions, device, speed settings (of the latest start)
    metrics.jsonl          one row per evaluation, appended and fsynced
    events.out.tfevents.*  TensorBoard scalars (written by resexp.run.recorder)
    last.pt, prev.pt       checkpoints (written by resexp.run.checkpoint through `atomic_write`)
    best.pt                the checkpoint of the lowest monitored error so far (a hard link: no copy)
    status.json            running | complete | interrupted | diverged | failed | imported, and the step reached
    .lock                  flock-ed by the process writing the run
    eval/<which>[+options].json   `resexp eval`'s numbers (resexp.commands.eval); never a training file

A run made by `resexp import` (resexp.commands.import_) holds config.yaml, status.json (imported),
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
from dataclasses import dataclass
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
