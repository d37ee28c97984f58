"""Reading a run's checkpoints: a file loaded with weights_only (no code runs) and checked for the
keys a resexp checkpoint has, and the latest good one of a run (last.pt, else prev.pt), with a
warning for one that is damaged. resexp.run.checkpoint writes them."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from resexp.errors import CheckpointError
from resexp.rundir.folder import LAST, NUMPY_STATE, PREVIOUS, RunDir, Warn

KEYS = ("model", "optimizer", "schedule", "step", "time", "running", "rng", "model_fields")


# Written since resexp 0.3 (absent from older checkpoints, which still resume): the run's whole
# identity and its data's fingerprint (what the checkpoint was trained as, against which
# config.yaml and data.json are checked), and the iteration this run's own training began at.
PROVENANCE = ("identity", "data", "began", "metrics")  # metrics: the hash of the rows written before it


def load_file(path: Path) -> dict[str, Any]:
    """A resexp checkpoint, or CheckpointError saying why the file is not one."""
    return read(path)[0]


def read(path: Path) -> tuple[dict[str, Any], str]:
    """A resexp checkpoint and the SHA-256 of its file (what an analysis of it is keyed by)."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (resume= takes a checkpoint file, e.g. runs/.../last.pt)")
    try:
        data = path.read_bytes()
        with torch.serialization.safe_globals(NUMPY_STATE):
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, a pickle of other objects, not a torch file at all
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if isinstance(saved, dict) and str(saved.get("format", "")).startswith("resexp.weights/"):
        raise CheckpointError(
            f"{path} holds weights only (resexp export, or an imported net), not a checkpoint: there is no "
            "optimizer state or data order to resume"
        )
    if not isinstance(saved, dict) or not set(KEYS) <= set(saved):
        raise CheckpointError(
            f"{path} is not a resexp checkpoint (it lacks {', '.join(sorted(set(KEYS) - set(saved)))})"
            if isinstance(saved, dict)
            else f"{path} is not a resexp checkpoint"
        )
    return saved, hashlib.sha256(data).hexdigest()


def load_latest(run: RunDir, warn: Warn) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run directory, or None when it has none."""
    found = latest(run, warn)
    return found[0] if found else None


def latest(run: RunDir, warn: Warn, doing: str = "resuming from") -> tuple[dict[str, Any], Path, str] | None:
    """The newest readable checkpoint of a run directory, its file and its SHA-256, or None when it
    has none. An unreadable last.pt falls back to prev.pt with a warning."""
    last, previous = run.file(LAST), run.file(PREVIOUS)
    if not last.exists() and not previous.exists():
        return None
    try:
        saved, sha = read(last)
        return saved, last, sha
    except CheckpointError as e:
        if not previous.exists():
            raise
        warn(f"warning: {e}; {doing} the previous checkpoint {previous}")
        saved, sha = read(previous)
        return saved, previous, sha
