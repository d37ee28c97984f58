"""A run directory's identity: the config it holds, whether a new command may write into it,
and whether a checkpoint belongs to a given model. Runs are never overwritten: the same folder
with another config is refused, a complete (or diverged) one is skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from resexp.config import Config, ConfigError
from resexp.recorder import CONFIG, read_status


def config_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flat_config(cfg: Any) -> dict[str, Any]:
    """A config (dataclasses or DictConfig) as {dotted.key: value}, enums as their names."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    out: dict[str, Any] = {}

    def walk(prefix: str, d: Any) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                out[prefix + key] = value

    walk("", OmegaConf.to_container(node, enum_to_str=True))
    return out


# Settings that change where or how fast a run goes, not its numbers.
NOT_RESULTS = ("device", "resume", "data.root", "data.download", "data.workers", "data.eval_batch_size",
               "speed.precision", "speed.channels_last", "speed.compile", "speed.fused_optimizer", "speed.cuda_graph",
               "speed.cudnn_benchmark")


def config_changes(run_dir: Path, cfg: Config) -> list[str]:
    """Fields whose values differ from those of the run already in `run_dir` (if any)."""
    try:
        before = flat_config(OmegaConf.load(run_dir / CONFIG))
    except (OSError, ValueError):
        return []
    now = flat_config(cfg)
    keys = sorted((set(before) | set(now)) - set(NOT_RESULTS))
    return [f"{k}: {before.get(k)} -> {now.get(k)}" for k in keys if before.get(k) != now.get(k)]


def model_fields(cfg: Config) -> dict[str, Any]:
    """What a checkpoint given as resume=PATH must agree on with this config."""
    flat = flat_config(cfg)
    return {k: v for k, v in flat.items() if k.startswith("model.")} | {"data.name": flat["data.name"]}


def check_run_dir(run_dir: Path, cfg: Config, console: Console) -> bool:
    """Whether `run_dir` still needs training; refuses a directory that holds another config."""
    changes = config_changes(run_dir, cfg)
    if changes:
        raise ConfigError(
            f"{run_dir} already holds a run with another config ({'; '.join(changes)}); it is never "
            "overwritten: set name=... (or hydra.run.dir=...) to start a separate run"
        )
    status = (read_status(run_dir) or {}).get("status")
    if status in ("complete", "diverged"):
        console.print(f"{run_dir} is {status} already; skipping it" +
                      (" (delete the folder to try again)" if status == "diverged" else ""), highlight=False)  # fmt: skip
        return False
    return True
