"""Shared helpers: the CLI driven in-process (the same entry point as the shell's `resexp`), the
real CLI in a subprocess for the tests where the process boundary is the point, and tiny runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from resexp.cli import app

# Under pytest-xdist (make test runs two workers on two cores) each worker computes with one
# thread, in-process and in the processes it starts, so that the workers do not fight over cores
# and a run's numbers do not depend on which process computed them.
WORKER_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 0
if WORKER_THREADS:
    import torch

    torch.set_num_threads(WORKER_THREADS)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR_NPZ = SHARED_DATA / "cifar10.npz"
# A run that takes about a second on a CPU: a tiny CIFAR-style net on the synthetic set.
TINY = [
    "data=synthetic",
    "data.train_size=256",
    "data.test_size=64",
    "model.depth=8",
    "schedule.iterations=16",
    "eval_every=8",
    "device=cpu",
]


def folder(*overrides: str) -> str:
    """The folder below the working directory that resexp names for a run of these overrides
    (runs/<name>/<data>/<mode>-<depth><option>_s<seed>,<what differs from the preset>)."""
    from resexp.launch.jobs import plan

    [job] = plan(list(overrides), multirun=False)
    return str(job.run_dir)


def __getattr__(name: str) -> str:
    """TINY_DIR, composed when a test module first imports it: not in pytest-xdist's controller
    process, which loads this file but runs no test (a Hydra composition there delays the workers)."""
    if name == "TINY_DIR":
        globals()[name] = folder(*TINY)
        return globals()[name]
    raise AttributeError(name)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """stderr's non-empty lines."""
        return [line for line in self.stderr.splitlines() if line.strip()]


def resexp(*args: str, cwd: Path) -> Outcome:
    """`resexp ARGS` run in-process in `cwd`, as the shell would run it."""
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner(env={"COLUMNS": "200", "HYDRA_FULL_ERROR": None}).invoke(
            app, list(args), catch_exceptions=False
        )
    finally:
        os.chdir(previous)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def resexp_process(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in its own process (`python -m resexp`), for what only a process shows."""
    return subprocess.run(
        [sys.executable, "-m", "resexp", *args],
        cwd=cwd,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def torchrun(*overrides: str, cwd: Path, nproc: int = 2, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=NPROC -m resexp train OVERRIDES`, started in `cwd`."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "resexp"]
        + ["train", *overrides],
        cwd=cwd,
        env={**process_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def process_env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    if WORKER_THREADS:  # the processes a test starts compute as the test's own process does
        env["OMP_NUM_THREADS"] = str(WORKER_THREADS)
    return env


def only_run(root: Path) -> Path:
    """The one run folder below `root` (for tests whose overrides make a long folder name)."""
    [metrics] = root.rglob("metrics.jsonl")
    return metrics.parent


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_time(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in metrics]


def leftovers(cwd: Path) -> list[str]:
    """Every file and folder a command left under cwd (outside the inputs a test put there)."""
    return sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if not p.name.endswith(".npz"))


def write_npz(path: Path, n_train: int = 64, n_test: int = 32, classes: int = 10, **overrides) -> Path:
    """A small CIFAR-shaped .npz (uint8 32x32 RGB, every class present)."""
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 255, (n_train, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(n_train) % classes,
        x_test=rng.integers(0, 255, (n_test, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(n_test) % classes,
    )
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Outcome]:
    """One finished TINY run (in-process), for the tests that only read what it wrote."""
    cwd = tmp_path_factory.mktemp("tiny")
    outcome = resexp("train", *TINY, cwd=cwd)
    assert outcome.code == 0, outcome.stderr
    return cwd / __getattr__("TINY_DIR"), outcome


TINY_SWEEP = [*TINY, "model.mode=plain,residual"]


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """TINY's plain and residual runs, trained once per test process: the analyses' tests read it
    in place, the property tests work on copies of it."""
    cwd = tmp_path_factory.mktemp("tiny_sweep")
    outcome = resexp("train", "-m", *TINY_SWEEP, cwd=cwd)
    assert outcome.code == 0, outcome.stderr
    return cwd


@pytest.fixture
def cifar_npz() -> Path:
    if not CIFAR_NPZ.exists():
        pytest.skip(f"real CIFAR-10 subset not found at {CIFAR_NPZ}")
    return CIFAR_NPZ


def signal_at(monkeypatch, iteration: int, *signums: int, gap: float = 0.01) -> None:
    """Deliver real signals to this process once the loop has done `iteration` iterations, `gap`
    seconds apart."""
    from resexp.run import recorder

    real, done = recorder.Recorder.iteration, []

    def iteration_then_signal(self):
        real(self)
        done.append(1)
        if len(done) == iteration:
            for signum in signums:
                os.kill(os.getpid(), signum)
                time.sleep(gap)  # let the handler run before the next signal

    monkeypatch.setattr(recorder.Recorder, "iteration", iteration_then_signal)


def fresh_joblib_workers() -> None:
    """joblib's loky workers outlive a command and keep the working directory they were started
    in; the tests run commands in-process from many directories, so each joblib test starts its own."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
