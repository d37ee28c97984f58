"""Checkpoints: last.pt holds everything needed to continue a run exactly (model, optimizer,
schedule, step, wall time, running training sums, RNG states, the model's identity).

A new checkpoint is written through the run directory's atomic write (temporary file, fsync,
rename); when its evaluation has the lowest monitored error so far (val/error when the run holds
out a validation set, else test/error) best.pt is made a hard link to it (`resexp eval --best`);
the one before stays as prev.pt, hard-linked there before the rename so that last.pt
exists at every instant, even under SIGKILL. Reading them back is resexp.rundir.checkpoints's (a
truncated or corrupt last.pt falls back to prev.pt with a warning). Checkpoints hold only tensors
and plain values, so they load with `weights_only=True`: resuming from a file never runs code from it.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resexp import identity
from resexp.config import Config
from resexp.errors import CheckpointError, first_line
from resexp.nets.build import load_weights
from resexp.run.schedule import Schedule
from resexp.rundir.folder import BEST, LAST, PREVIOUS, RunDir, atomic_write


@dataclass
class TrainState:
    """Where the loop is: what a checkpoint restores besides the model's and optimizer's tensors."""

    step: int = 0  # iterations done
    time: float = 0.0  # seconds spent training and evaluating, summed over resumes
    running: dict[str, Any] | None = None  # training loss/error sums since the last evaluation
    start_step: int | None = (
        0  # the iteration this run's own training began at (resume=PATH: that checkpoint's); None: unknown
    )


def model_fields(cfg: Any) -> dict[str, Any]:
    """What a checkpoint given as resume=PATH must agree on with the config that resumes it: the
    fields its tensors depend on (a field newer than the checkpoint counts as its default)."""
    values = identity.of(cfg)
    return {k: values[k] for k in identity.weight_keys()}


def rng_states() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys  # an array in resexp 0.1's checkpoints
    np.random.set_state((kind, keys.astype(np.uint32), position, has_gauss, cached))
    random.setstate(states["python"])


def save(run: RunDir, state: dict[str, Any]) -> None:
    """Write `state` as the run's last.pt without ever leaving it half-written or absent."""
    last, previous = run.file(LAST), run.file(PREVIOUS)

    def keep_previous() -> None:  # last.pt becomes prev.pt without ever being absent
        if not last.exists():
            return
        keep = previous.with_name(PREVIOUS + ".tmp")
        keep.unlink(missing_ok=True)
        try:
            try:
                os.link(last, keep)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(last, keep)
            os.replace(keep, previous)
        except BaseException:
            keep.unlink(missing_ok=True)
            raise

    try:
        atomic_write(
            last, lambda f: torch.save({**state, "rng": rng_states()}, f), durable=True, before_replace=keep_previous
        )
    except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        free = shutil.disk_usage(run.path).free
        reason = f"no space left on device ({free / 2**20:.0f} MiB free)" if free < 2**28 else first_line(str(e))
        raise CheckpointError(f"could not write the checkpoint {last}: {reason}") from e


def link(source: Path, target: Path) -> None:
    """Make `target` the same file as `source` (a hard link; a copy where links are not possible),
    replacing it at once: a reader meets the old file or the new one."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Checkpointer:
    """Saves one run's training state into its directory and restores it from a checkpoint."""

    def __init__(
        self,
        run: RunDir,
        cfg: Config,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        data: str | None = None,  # the data's fingerprint
        writes: bool = True,  # under torchrun only rank 0 writes; the others hold the same state
        monitor: str = "test/error",  # what best.pt is the lowest of
        rows: list[dict[str, Any]] = (),  # the evaluations before this start: the best so far
        scaler: torch.amp.GradScaler | None = None,  # fp16's: its scale and growth count resume exactly
    ) -> None:
        self.run, self.model, self.optimizer, self.schedule = run, model, optimizer, schedule
        self.model_config, self.scaler = cfg.model, scaler
        self.fields, self.writes = model_fields(cfg), writes
        self.identity, self.data = identity.of(cfg), data
        self.monitor = monitor
        self.best = min((r[monitor] for r in rows if math.isfinite(r.get(monitor, math.nan))), default=math.inf)

    def check(self, saved: dict[str, Any], source: str) -> None:
        """Refuse a checkpoint made for another model before anything is loaded."""
        theirs = model_fields(saved["model_fields"])
        diff = "; ".join(f"{k}: {theirs[k]} vs {v}" for k, v in self.fields.items() if not identity.same(theirs[k], v))
        if diff:
            raise CheckpointError(f"the checkpoint {source} was made for another model ({diff})")

    def save(self, state: TrainState, row: dict[str, Any] | None = None) -> None:
        """The checkpoint of `state`; best.pt too when `row` (its evaluation) is the best so far."""
        if not self.writes:
            return
        save(
            self.run,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "step": state.step,
                "time": state.time,
                "running": state.running,
                "model_fields": self.fields,
                "identity": self.identity,
                "data": self.data,
                "began": state.start_step,
                "metrics": self.run.metrics_digest(),
                **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            },
        )
        value = math.nan if row is None else row.get(self.monitor, math.nan)
        if math.isfinite(value) and value < self.best:
            self.best = value
            link(self.run.file(LAST), self.run.file(BEST))

    def restore(self, saved: dict[str, Any], source: str) -> TrainState:
        self.check(saved, source)
        if isinstance(saved.get("model"), dict):
            load_weights(self.model, saved["model"], self.model_config, f"the checkpoint {source}")
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.schedule.load_state_dict(saved["schedule"])
            if self.scaler is not None and "scaler" in saved:  # a checkpoint of another precision has none
                self.scaler.load_state_dict(saved["scaler"])
            restore_rng_states(saved["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"the checkpoint {source} does not fit this run ({type(e).__name__})") from None
        began = saved.get("began") if source == str(self.run.path) else saved["step"]  # resume=PATH: a new run
        return TrainState(step=saved["step"], time=saved["time"], running=saved["running"], start_step=began)
