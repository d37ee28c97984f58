"""The side effects of a run: its self-description (resolved config, data identity, environment,
status), one metrics.jsonl row and TensorBoard scalars per evaluation, and the console (a
progress bar and one line per evaluation). The loop only hands numbers here; the files
themselves belong to resexp.rundir.

TensorBoard tags: train/loss, train/error, test/loss, test/error (and val/* with a validation
split), lr; errors are in percent, x is the iteration. Each run writes into its own directory,
so `tensorboard --logdir runs` lays every run of a sweep side by side. Each run also writes, into
its own directory (not a new run, as SummaryWriter.add_hparams would): its hyperparameters for
the HParams tab (resexp.run.hparams), whose metrics are the final/* and best/* scalars below, and a
Custom Scalars layout with one chart of training error and one of test error that hold every run
(the paper's style).
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from resexp import __version__, identity
from resexp.config import Config
from resexp.run import hparams
from resexp.rundir.folder import CONFIG, DATA, ENVIRONMENT, RunDir, atomic_write, config_yaml, write_json

NOT_SCALARS = ("step", "epoch", "time", "diverged")


LAYOUT = {
    "errors (all runs)": {
        "training error": ["Multiline", [r"^train/error$"]],
        "test error": ["Multiline", [r"^test/error$"]],
    }
}


def git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device) -> dict[str, Any]:
    """Where and with what a run ran: enough to tell two runs' numbers apart later."""
    return {
        "resexp": __version__,
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "Apple GPU (MPS)"
        if device.type == "mps"
        else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def format_line(metrics: dict[str, Any], total: int) -> str:
    parts = [f"[{metrics['step']:>{len(str(total))}}/{total}]", f"epoch {metrics['epoch']:.1f}"]
    for key in ("train/loss", "train/error", "test/loss", "test/error", "val/error"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.2f}%" if key.endswith("error") else f"{key} {metrics[key]:.3f}")
    if metrics.get("train/skipped_steps"):  # fp16: steps whose gradients overflowed, left out by the scaler
        parts.append(f"skipped {metrics['train/skipped_steps']}")
    parts.append(f"lr {metrics['lr']:.4g}")
    return "  ".join(parts)


def after_earlier_event_files(run_dir: Path) -> None:
    """TensorBoard reads a run's event files in name order, and names start with the second the
    file was made: a resumed run's file must not share that second with the one before it (a
    crash and a re-run within one second), or its purge of redone steps comes first and fails."""
    seconds = [
        int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*") if p.name.split(".")[3].isdigit()
    ]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.02)


class Recorder:
    """The side effects of one run, in its directory. Opening it keeps the metrics rows up to
    `resume_step` (those logged after the checkpoint being resumed are redone) and tells
    TensorBoard to drop its events after that step."""

    def __init__(
        self,
        run: RunDir,
        total: int,
        resume_step: int,
        rows: list[dict[str, Any]],
        console: Console | None = None,
        digest: str | None = None,  # the run's identity digest, kept in status.json beside config.yaml
        label: str | None = None,  # what each console line starts with (runs training side by side)
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.total, self.digest, self.label = run, total, digest, label
        self.console = console or Console(stderr=True)
        kept = [r for r in rows if r["step"] <= resume_step]  # those after the checkpoint are redone
        run.keep_metrics(kept)
        after_earlier_event_files(run.path)
        self.writer = SummaryWriter(str(run.path), purge_step=resume_step + 1 if resume_step else None)
        self.progress = Progress(
            TextColumn(f"[bold]{run.path.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("iterations"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task("train", total=total, completed=resume_step)
        self.best: dict[str, float] = {}
        for row in kept:
            self.track_best(row)

    def describe(self, cfg: Config, data: dict[str, Any], env: dict[str, Any]) -> None:
        """The run directory's self-description, written when the run starts."""
        atomic_write(self.run.file(CONFIG), config_yaml(cfg))
        write_json(self.run.file(DATA), data)
        write_json(self.run.file(ENVIRONMENT), env)
        for summary in hparams.session(identity.of(cfg), self.run.path.name):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_custom_scalars(LAYOUT)

    def track_best(self, row: dict[str, Any]) -> None:
        for key in ("train/error", "test/error"):
            if key in row and row[key] == row[key]:  # not NaN
                self.best[key] = min(self.best.get(key, float("inf")), row[key])

    def status(self, status: str, step: int, **extra: Any) -> None:
        self.run.set_status(status, step, self.total, **extra, **({"identity": self.digest} if self.digest else {}))

    def __enter__(self) -> Recorder:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()
        self.writer.close()

    def iteration(self) -> None:
        self.progress.advance(self.task)

    def evaluation(self, metrics: dict[str, Any]) -> None:
        """One evaluation: a metrics.jsonl line, TensorBoard scalars, a console line."""
        self.run.append_metrics(metrics)
        step = metrics["step"]
        for key, value in metrics.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        self.track_best(metrics)
        for key in ("train/error", "test/error"):
            if key in metrics:
                self.writer.add_scalar("final/" + key.replace("/", "_"), metrics[key], step)
                self.writer.add_scalar("best/" + key.replace("/", "_"), self.best.get(key, metrics[key]), step)
        self.writer.flush()
        self.message(format_line(metrics, self.total))

    def message(self, text: str) -> None:
        line = text if self.label is None else f"{self.label}  {text}"
        self.progress.console.print(line, highlight=False, soft_wrap=True, markup=False)


class Quiet:
    """The recorder of a torchrun process other than rank 0: the same calls, no side effects."""

    def __enter__(self) -> Quiet:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def describe(self, cfg: Config, data: dict[str, Any], env: dict[str, Any]) -> None:
        pass

    def status(self, status: str, step: int, **extra: Any) -> None:
        pass

    def iteration(self) -> None:
        pass

    def evaluation(self, metrics: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass
