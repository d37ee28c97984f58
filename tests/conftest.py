"""Shared helpers: the real configs composed in-process, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from resexp.config import CONFIG_DIR, register, register_resolvers

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR_NPZ = SHARED_DATA / "cifar10.npz"
# A run that takes a couple of seconds on a CPU: a tiny CIFAR-style net on the synthetic set.
TINY = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.depth=8",
        "schedule.iterations=16", "schedule.milestones=[8]", "eval_every=8", "device=cpu"]

register()
register_resolvers()


def compose_config(overrides: list[str] | None = None):
    """The composed config of `resexp train OVERRIDES`, without the hydra node."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides or [])


def resexp(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI, as a user would, in `cwd`."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "resexp.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cifar_npz() -> Path:
    if not CIFAR_NPZ.exists():
        pytest.skip(f"real CIFAR-10 subset not found at {CIFAR_NPZ}")
    return CIFAR_NPZ
