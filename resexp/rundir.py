"""The run directory and its one owner: file names and formats, atomic writes, the lock, the
status, the run's identity (config and data), and reading runs back for plot and report.

    config.yaml            the resolved config: a re-run with other values is refused
    data.json              the dataset's name, file and fingerprint: a re-run on other data is refused
    environment.json       git commit, command, versions, device, speed settings (of the latest start)
    metrics.jsonl          one row per evaluation, appended and fsynced
    events.out.tfevents.*  TensorBoard scalars (written by resexp.recorder)
    last.pt, prev.pt       checkpoints (written by resexp.checkpoint through `atomic_write`)
    status.json            running | complete | interrupted | diverged | failed, and the step reached
    .lock                  flock-ed by the process writing the run

Every file that is rewritten goes through `atomic_write` (a temporary file renamed over the old
one), so a reader or a crash never meets half a file; metrics.jsonl is only appended to, and the
one thing a crash can leave there, a torn last line, is repaired with a warning.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from omegaconf import DictConfig, OmegaConf

from resexp.errors import MetricsError, RunDirError

CONFIG, DATA, ENVIRONMENT, METRICS, STATUS = (
    "config.yaml",
    "data.json",
    "environment.json",
    "metrics.jsonl",
    "status.json",
)
LAST, PREVIOUS, LOCK = "last.pt", "prev.pt", ".lock"
ROW_KEYS = ("step", "epoch", "lr", "train/loss", "train/error")  # every metrics row has these
# Settings that change where or how fast a run goes, not its numbers: not part of its identity.
NOT_RESULTS = (
    "device",
    "resume",
    "data.root",
    "data.download",
    "data.workers",
    "data.eval_batch_size",
    "speed.precision",
    "speed.channels_last",
    "speed.compile",
    "speed.fused_optimizer",
    "speed.cuda_graph",
    "speed.cudnn_benchmark",
    "log.grad_norms",
)
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
    """run_dir/.lock, held with flock by the process writing the run: a second process (another
    terminal, two sweep jobs that map to one directory) is refused. The kernel drops the lock when
    its process dies, so a lock left by a killed run, or one whose pid now belongs to another
    process, is simply taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirError(
                    f"{self.path.parent} is being written by another resexp process (pid {holder}); "
                    "two runs never share a directory"
                ) from None
            try:  # its last holder may have removed the file between our open and our flock
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def config_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flat_config(cfg: Any) -> dict[str, Any]:
    """A config (dataclasses, DictConfig or plain dict) as {dotted.key: value}, enums as strings."""
    if not isinstance(cfg, dict):
        cfg = OmegaConf.to_container(
            cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg), enum_to_str=True
        )
    out: dict[str, Any] = {}

    def walk(prefix: str, d: dict) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                out[prefix + str(key)] = value

    walk("", cfg)
    return out


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

    # metrics
    def metrics(self, warn: Warn | None = None, repair: bool = False) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl. A torn last line (a crash mid-write) is dropped with a
        warning, and with `repair` removed from the file; any other bad line is a MetricsError."""
        path = self.file(METRICS)
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
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
                        + ("removed it" if repair else "ignoring it")
                    )
            if repair:
                self.write_metrics(rows)
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write(self.file(METRICS), "".join(json.dumps(r) + "\n" for r in rows), durable=True)

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
        except (OSError, yaml.YAMLError) as e:
            raise RunDirError(f"{path} cannot be read ({type(e).__name__}): delete the folder to start again") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
            raise RunDirError(f"{path} is not a resexp config: delete the folder to start again")
        return saved

    def config_changes(self, cfg: Any) -> list[str]:
        """Fields whose values differ from those of the run already here (if any)."""
        saved = self.saved_config()
        if saved is None:
            return []
        before, now = flat_config(saved), flat_config(cfg)
        if dataclasses.is_dataclass(cfg):  # a field newer than the run counts as its default there
            before = {**flat_config(type(cfg)()), **before}
        keys = sorted((set(before) | set(now)) - set(NOT_RESULTS))
        return [f"{k}: {before.get(k)} -> {now.get(k)}" for k in keys if before.get(k) != now.get(k)]

    def data_change(self, identity: dict[str, Any]) -> str | None:
        """How the dataset of this command differs from the one the run was trained on, if it does."""
        before = read_json(self.file(DATA))
        if not isinstance(before, dict) or before.get("fingerprint") == identity.get("fingerprint"):
            return None
        return (
            f"it was trained on {before.get('source')} (fingerprint {before.get('fingerprint')}), "
            f"this command reads {identity.get('source')} (fingerprint {identity.get('fingerprint')})"
        )

    def has_checkpoint(self) -> bool:
        return self.file(LAST).exists() or self.file(PREVIOUS).exists()


# --------------------------------------------------------------------------- reading runs back


@dataclass
class Run:
    """A run as plot and report see it."""

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
        return self.status == "diverged" or any(
            not math.isfinite(r["train/loss"]) or r.get("diverged") for r in self.rows
        )

    @property
    def complete(self) -> bool:
        """Finished as configured: status complete and its last row at its iteration count."""
        return self.status == "complete" and self.step >= self.iterations and not self.diverged

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


def load_run(path: Path, warn: Warn) -> Run:
    """A run directory read back; RunDirError when its config.yaml or metrics.jsonl is malformed."""
    run_dir = RunDir(path)
    cfg = run_dir.saved_config()
    if cfg is None:
        raise RunDirError(f"{path} has no {CONFIG}")
    try:
        m = cfg["model"]
        run = Run(
            path=path,
            data=str(cfg["data"]["name"]),
            family=str(m["family"]),
            mode=str(m["mode"]),
            depth=int(m["depth"]),
            shortcut=str(m["shortcut"]),
            seed=int(cfg["seed"]),
            iterations=int(cfg["schedule"]["iterations"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path / CONFIG} is not a resexp config (no valid {e})") from None
    run.rows = run_dir.metrics(warn)
    run.status = str(run_dir.status().get("status", "running"))
    return run


def find_runs(root: Path, warn: Warn) -> list[Run]:
    """Every run below `root` (or `root` itself), sorted by data, family, mode, depth, seed; a
    malformed run is left out with one warning."""
    paths = {p.parent for name in (METRICS, STATUS) for p in Path(root).rglob(name)}
    runs = []
    for path in sorted(paths):
        try:
            runs.append(load_run(path, warn))
        except RunDirError as e:
            warn(f"warning: skipping a malformed run: {e}")
    return sorted(runs, key=lambda r: (r.data, r.family, r.mode, r.depth, r.shortcut, r.seed))
