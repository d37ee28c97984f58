"""Every write of one run as each process of it makes the call: the recorder's (metrics rows,
TensorBoard, status, the run's self-description) and the checkpointer's. Under torchrun rank 0
writes and the other processes have nothing to write (resexp.run.recorder.Quiet, a Checkpointer
that does not write), and each write is agreed by every process (resexp.distributed.all_or_none):
a write that fails on rank 0 (a full disk) ends every process at once instead of leaving the
others waiting in the next collective. In one process the writes are simply made. So the loop
and the lifecycle read as one process's life."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resexp import distributed
from resexp.config import Config
from resexp.run.checkpoint import Checkpointer, TrainState
from resexp.run.recorder import Quiet, Recorder


class Writer:
    """The run's recorder (rank 0's; Quiet elsewhere) and checkpointer, each write agreed."""

    def __init__(self, recorder: Recorder | Quiet, checkpoints: Checkpointer) -> None:
        self.recorder, self.checkpoints = recorder, checkpoints

    @classmethod
    def open(cls, recorder: Callable[[], Recorder], checkpoints: Checkpointer) -> Writer:
        """Open rank 0's recorder (it rewrites metrics.jsonl up to the checkpoint); agreed."""
        main = distributed.current().main
        return cls(distributed.all_or_none(lambda: recorder() if main else Quiet()), checkpoints)

    def __enter__(self) -> Writer:
        self.recorder.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.recorder.__exit__(*exc)

    def message(self, text: str) -> None:
        """A line on rank 0's console (no file is written: nothing to agree)."""
        self.recorder.message(text)

    def iteration(self) -> None:
        self.recorder.iteration()

    def start(self, cfg: Config, data: dict[str, Any], env: dict[str, Any], step: int) -> None:
        """The run's self-description (config.yaml, data.json, environment.json) and status running."""

        def start() -> None:
            self.recorder.describe(cfg, data, env)
            self.recorder.status("running", step)

        distributed.all_or_none(start)

    def evaluation(self, row: dict[str, Any] | None, state: TrainState) -> None:
        """An evaluation's row (if this is one), then the checkpoint: a crash between them leaves a
        row after the checkpoint, which the resume drops and redoes."""

        def record() -> None:
            if row is not None:
                self.recorder.evaluation(row)
            self.checkpoints.save(state, row)

        distributed.all_or_none(record)

    def diverged(self, row: dict[str, Any]) -> None:
        """The row whose training loss is not finite (no checkpoint of a diverged net)."""
        distributed.all_or_none(lambda: self.recorder.evaluation(row))

    def status(self, status: str, step: int, **extra: Any) -> None:
        """status.json: agreed, as every process reaches it (complete)."""
        distributed.all_or_none(lambda: self.recorder.status(status, step, **extra))

    def stopped(self, status: str, step: int, **extra: Any) -> None:
        """status.json as a run stops on an error or a signal: rank 0's alone, not agreed, since the
        other processes may be gone (their failure is what stopped the run)."""
        self.recorder.status(status, step, **extra)
