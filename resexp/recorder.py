"""Everything a run writes besides checkpoints: the self-description of its directory (resolved
config, environment, status), one metrics.jsonl line and TensorBoard scalars per evaluation,
and the console (a progress bar and one line per evaluation). The loop only hands numbers here.

TensorBoard tags: train/loss, train/error, test/loss, test/error (and val/* with a validation
split), lr; errors are in percent, x is the iteration. Each run writes into its own directory,
so `tensorboard --logdir runs` lays every run of a sweep side by side. Each run also writes, into
its own directory (not a new run, as SummaryWriter.add_hparams would): its hyperparameters for
the HParams tab, with final and best errors as its metrics, and a Custom Scalars layout with one
chart of training error and one of test error that hold every run (the paper's style).
"""

from __future__ import annotations

import json
import os
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

METRICS = "metrics.jsonl"
STATUS = "status.json"
ENVIRONMENT = "environment.json"
CONFIG = "config.yaml"
NOT_SCALARS = ("step", "epoch", "time", "diverged")
HPARAM_METRICS = ("final/train_error", "final/test_error", "best/train_error", "best/test_error")
LAYOUT = {"errors (all runs)": {"training error": ["Multiline", [r"^train/error$"]],
                                "test error": ["Multiline", [r"^test/error$"]]}}  # fmt: skip


def write_json(path: Path, obj: Any) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl; a torn last line (a crash mid-write) is ignored."""
    rows = []
    try:
        lines = (run_dir / METRICS).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device) -> dict[str, Any]:
    """Where and with what a run ran: enough to tell two runs' numbers apart later."""
    env = {
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return env


def format_line(metrics: dict[str, Any], total: int) -> str:
    parts = [f"[{metrics['step']:>{len(str(total))}}/{total}]", f"epoch {metrics['epoch']:.1f}"]
    for key in ("train/loss", "train/error", "test/loss", "test/error", "val/error"):
        if key in metrics:
            unit = "%" if key.endswith("error") else ""
            parts.append(f"{key} {metrics[key]:.3f}{unit}" if unit == "" else f"{key} {metrics[key]:.2f}{unit}")
    parts.append(f"lr {metrics['lr']:.4g}")
    return "  ".join(parts)


class Recorder:
    """The side effects of one run, in its directory."""

    def __init__(self, run_dir: Path, total: int, resume_step: int, console: Console | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.total = run_dir, total
        self.console = console or Console(stderr=True)
        truncate_metrics(run_dir, resume_step)
        # purge_step drops events a crashed process logged after its last checkpoint.
        self.writer = SummaryWriter(str(run_dir), purge_step=resume_step + 1 if resume_step else None)
        self.progress = Progress(
            TextColumn(f"[bold]{run_dir.name}"), BarColumn(), MofNCompleteColumn(), TextColumn("iterations"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task("train", total=total, completed=resume_step)
        self.best: dict[str, float] = {}
        for row in read_metrics(run_dir):
            self.track_best(row)

    def describe(self, config_yaml: str, env: dict[str, Any], hparams: dict[str, Any]) -> None:
        """The run directory's self-description, written when the run starts."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        (self.run_dir / CONFIG).write_text(config_yaml)
        write_json(self.run_dir / ENVIRONMENT, env)
        for summary in hparams_summary(hparams, {k: 0.0 for k in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_custom_scalars(LAYOUT)

    def track_best(self, row: dict[str, Any]) -> None:
        for key in ("train/error", "test/error"):
            if key in row and isinstance(row[key], (int, float)) and row[key] == row[key]:
                self.best[key] = min(self.best.get(key, float("inf")), row[key])

    def status(self, status: str, step: int, **extra: Any) -> None:
        write_json(self.run_dir / STATUS, {"status": status, "step": step, "iterations": self.total, **extra})

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
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps(metrics) + "\n")
            f.flush()
            os.fsync(f.fileno())
        step = metrics["step"]
        for key, value in metrics.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        self.track_best(metrics)
        for key in ("train/error", "test/error"):
            if key in metrics:
                self.writer.add_scalar("final/" + key.replace("/", "_"), metrics[key], step)
                self.writer.add_scalar("best/" + key.replace("/", "_"), self.best[key], step)
        self.writer.flush()
        self.progress.console.print(format_line(metrics, self.total), highlight=False, soft_wrap=True, markup=False)

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, soft_wrap=True, markup=False)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the rows up to `step`: those logged after the checkpoint we resume from are redone."""
    path = run_dir / METRICS
    if not path.exists():
        return
    rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
