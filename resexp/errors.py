"""The error boundary's vocabulary: every exception type of resexp, the exit codes, and any
exception as one line.

resexp's own errors carry a finished one-line message naming the field or file and what would
be valid. Errors raised by libraries (Hydra composing the config, OmegaConf checking a value,
the OS) are turned into one line from their type and fields, never by reading their text.
Exit status: 0 done, 1 a mistake or a failure (one line says which), 128 + the signal's number
when a signal stopped the command (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import math
import signal
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

FAILED = 1


def signalled(signum: int) -> int:
    """The exit status of a command stopped by a signal, as a shell reports it."""
    return 128 + signum


class Reported(Exception):
    """An error whose message is already the one line to show."""


class UserError(Reported):
    """A mistake the user can fix; the message is one line that says what and where."""


class OptionError(UserError, ValueError):
    """A command-line option (not a config field) out of its range: the message names it."""


def within(*options: tuple[str, Any, float, float]) -> None:
    """Check (option, value, lowest, highest) of numeric options (None: not given); OptionError names
    the first one that is not a number within its bounds, as the command line spells it."""
    for option, value, low, high in options:
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
            raise OptionError(f"{option} {value} must be at least {low:g}")
        if value > high:
            raise OptionError(f"{option} {value} must be at most {high:g}")


class ConfigError(UserError, ValueError):
    """A config that composes but breaks a range or a rule that ties fields together."""


class DataError(UserError):
    """The dataset is missing or malformed; the message says what was expected."""


class RunDirError(UserError):
    """A run directory that cannot be used as asked: in use, another config, another dataset."""


class CheckpointError(RunDirError):
    """A checkpoint that cannot be read, or belongs to another model."""


class MetricsError(RunDirError):
    """A metrics.jsonl line that is not a metrics row (file and line number in the message)."""


class DamagedRun(RunDirError):
    """A run directory that lacks a file it should have, or whose files disagree: never resumed
    silently; the message names what is wrong and the two ways out (restore it, or delete it)."""


class Diverged(Reported):
    """The training loss became NaN or infinite; the run is marked diverged."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during training and a checkpoint was saved. A BaseException, so
    that it ends a whole sweep instead of one run of it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Aborted(Interrupted):
    """A signal before training started (nothing was written), or a second one during training
    (no time to save)."""

    def __init__(self, signum: int, started: bool) -> None:
        super().__init__(signum)
        self.started = started


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C while a launcher waited for jobs running in their own processes, which received it too."""

    def __init__(self, count: int) -> None:
        super().__init__(
            f"interrupted: {count} job(s) of the sweep had started; each saves a checkpoint and stops (their "
            "logs say where); run the same command again to resume"
        )


class OwnFailure(Reported):
    """Under torchrun, a failure of this process itself (a file missing on its node, its memory):
    it says so with its rank, while the processes it takes down end with PeerFailed or PeerLost."""


class TrainingFailed(Reported):
    """An error after training started; the run directory is left resumable."""

    def __init__(self, run_dir: Path, step: int, cause: BaseException, checkpoint: bool = True) -> None:
        where = (
            f"{run_dir} keeps its last checkpoint: run the same command again to resume"
            if checkpoint
            else f"{run_dir} has no checkpoint yet: the same command starts it again"
        )
        super().__init__(f"{one_line(cause)} (at iteration {step}; {where})")


class OwnTrainingFailure(TrainingFailed, OwnFailure):
    """TrainingFailed by an error of this process itself, not by the loss of another process."""


class PeerFailed(UserError):
    """Another process of a torchrun run failed where this one did not; it reported why."""


class PeerLost(Reported):
    """A collective failed because another process of the torchrun run is gone."""

    def __init__(self) -> None:
        super().__init__(
            "lost contact with another process of this torchrun run (it ended or failed; its own message or "
            "torchrun's report says which)"
        )


class NothingToAnalyse(UserError):
    pass


class ForeignFolder(RunDirError):
    """A folder whose config.yaml resexp did not write."""


class NotRemovable(UserError):
    """A plain block that changes the shape of its input has no identity to leave in its place."""


def one_line(e: BaseException) -> str:
    """Any exception as one line for the console."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    if isinstance(e, Reported):
        return first_line(str(e))
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    if isinstance(e, MissingConfigException):
        group, _, option = (e.missing_cfg_file or "").rpartition("/")
        options = [o for o in e.options or [] if not o.startswith("base_")]
        if group and options:
            return f"{group}={option} is not a config: available options are {', '.join(options)}"
        return f"config {e.missing_cfg_file!r} not found"
    if isinstance(e, OverrideParseException):
        return f"an override does not parse: {first_line(str(e))} (write key=value, e.g. model.depth=56)"
    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        return unknown_key(cause.full_key, cause.object_type)
    if isinstance(cause, ValidationError) and cause.full_key:
        expected = field_type(cause.object_type, cause.key)
        shown = f"{cause.full_key}={cause.value}"
        return f"{shown} is not valid: expected {describe_type(expected)}" if expected else f"{shown} is not valid"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {first_line(cause.msg or str(cause))}"
    return f"{type(e).__name__}: {first_line(str(e))} (an unexpected error: --debug shows the traceback)"


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def unknown_key(full_key: str, object_type: Any) -> str:
    fields = list(getattr(object_type, "__dataclass_fields__", {}))
    parent = full_key.rpartition(".")[0]
    where = f"{parent} has" if parent else "the top level has"
    return f"{full_key} is not a field: {where} {', '.join(fields)}" if fields else f"{full_key} is not a field"


def field_type(object_type: Any, key: Any) -> Any:
    try:
        return typing.get_type_hints(object_type)[key]
    except (TypeError, KeyError, NameError):
        return None


def describe_type(t: Any) -> str:
    """'one of plain, residual', 'an integer', 'a list of integers, e.g. [100,200]', ..."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) in (typing.Union, types.UnionType) and len(args) == 1:
        return "null or " + describe_type(args[0])
    if typing.get_origin(t) is list:
        return f"a list of {describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s, e.g. [100,200]"
    if isinstance(t, type) and issubclass(t, Enum):
        return "one of " + ", ".join(m.value for m in t)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, str(t))


class LauncherFailed(UserError):
    """A launcher's own failure (a job killed under submitit, ...): which runs did not finish."""

    def __init__(self, cause: BaseException, left: list, started: list) -> None:
        runs = ", ".join(str(path) for path in left[:5]) + (" ..." if len(left) > 5 else "")
        why = one_line(cause) if isinstance(cause, OSError) else f"{type(cause).__name__}: {first_line(str(cause))}"
        text = f"the launcher stopped ({why}); {len(left)} run(s) did not finish: {runs}"
        if not started:  # e.g. a run folder that cannot be made: nothing to resume
            text += "; none of them had started"
        elif len(started) == len(left):
            text += "; the same command again resumes them from their last checkpoints"
        else:
            text += f"; the same command again resumes the {len(started)} that had started from their last checkpoints"
        super().__init__(text)
