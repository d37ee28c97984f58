"""Atomic checkpoints: last.pt holds everything needed to continue a run exactly (model,
optimizer, schedule, step, wall time, RNG states, config). A new checkpoint is written to a
temporary file, flushed and fsynced, and only then renamed over last.pt; the one before it stays
as prev.pt (hard-linked there first, so last.pt exists at every instant, even under SIGKILL), and a
truncated or corrupt last.pt falls back to prev.pt with a warning."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last.pt"
PREVIOUS = "prev.pt"


class CheckpointError(RuntimeError):
    pass


def rng_states() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` as run_dir/last.pt without ever leaving a half-written last.pt."""
    last, tmp = run_dir / LAST, run_dir / (LAST + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({**state, "rng": rng_states()}, f)
        f.flush()
        os.fsync(f.fileno())
    if last.exists():  # last.pt becomes prev.pt without ever being absent
        keep = run_dir / (PREVIOUS + ".tmp")
        keep.unlink(missing_ok=True)
        try:
            os.link(last, keep)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(last, keep)
        os.replace(keep, run_dir / PREVIOUS)
    os.replace(tmp, last)
    dir_fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return last


def load_file(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, not a checkpoint, ...
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None


def load_latest(run_dir: Path, warn=print) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run directory, or None when it has none."""
    last, previous = run_dir / LAST, run_dir / PREVIOUS
    if not last.exists() and not previous.exists():
        return None
    try:
        return load_file(last)
    except CheckpointError as e:
        if not previous.exists():
            raise
        warn(f"warning: {e}; resuming from the previous checkpoint {previous}")
        return load_file(previous)


class RunLock:
    """run_dir/.lock holds the pid of the process writing the run: a second process (another
    terminal, or two sweep jobs that map to one directory) is refused; a lock left by a process
    that died (SIGKILL) is taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and alive(pid):
                    raise CheckpointError(f"{self.path.parent} is being written by another resexp process "
                                          f"(pid {pid}); two runs never share a directory")  # fmt: skip
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
