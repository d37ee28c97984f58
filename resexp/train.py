"""The training loop: SGD on a plain or residual net, evaluating every `eval_every` iterations.

`run` assembles the pieces from a config (data, model, optimizer, schedule, recorder) and
resumes from the run directory's checkpoint when there is one; `train` is the loop itself, a few
plain functions that receive objects, not the config. Training error is the running error of
the augmented mini-batches since the last evaluation, as in the paper's curves; test error is
measured on the whole evaluation set with the net in eval mode.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from resexp import checkpoint
from resexp.config import Config, ConfigError, _value, validate
from resexp.data import Data, build_data
from resexp.models import build_net
from resexp.recorder import CONFIG, Recorder, environment, read_metrics, read_status
from resexp.schedule import Schedule


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainState:
    step: int = 0  # iterations done
    time: float = 0.0  # seconds spent training and evaluating, summed over resumes


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The only function that turns config into a model."""
    m = cfg.model
    return build_net(_value(m.family), m.depth, _value(m.mode), _value(m.shortcut), num_classes)


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} asked for, but no CUDA device is available: use device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Running:
    """Sums of training loss and errors over an interval, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.errors = torch.zeros((), dtype=torch.int64, device=self.device)
        self.count = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss.detach() * len(labels)
        self.errors += (logits.argmax(1) != labels).sum()
        self.count += len(labels)

    def summary(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/loss": self.loss.item() / self.count, f"{prefix}/error": 100.0 * self.errors.item() / self.count}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               running: Running) -> None:  # fmt: skip
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    running.add(loss, logits, y)


@torch.no_grad()
def evaluate(model: nn.Module, batches, prefix: str) -> dict[str, float]:
    """Loss and error (%) over a whole evaluation set. 5-d batches (B, crops, C, H, W) are
    multi-crop: the crops' softmax outputs are averaged."""
    model.eval()
    loss, errors, count = 0.0, 0, 0
    for x, y in batches:
        if x.dim() == 5:
            probs = F.softmax(model(x.flatten(0, 1)).float(), -1).view(x.shape[0], x.shape[1], -1).mean(1)
            loss += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
            errors += (probs.argmax(1) != y).sum().item()
        else:
            logits = model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            errors += (logits.argmax(1) != y).sum().item()
        count += len(y)
    model.train()
    return {f"{prefix}/loss": loss / count, f"{prefix}/error": 100.0 * errors / count}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train(model: nn.Module, data: Data, optimizer: torch.optim.Optimizer, schedule: Schedule, recorder: Recorder,
          state: TrainState, iterations: int, eval_every: int, save) -> TrainState:  # fmt: skip
    """Run SGD from `state.step` to `iterations`; evaluate, record and checkpoint every
    `eval_every` iterations and at the end. Raises Diverged on a non-finite training loss."""
    per_epoch = len(data.train)
    device = next(model.parameters()).device
    running = Running(device)
    model.train()
    started = time.perf_counter() - state.time
    while state.step < iterations:
        epoch, start = divmod(state.step, per_epoch)
        for x, y in data.train.batches(epoch, start):
            lr = schedule.lr(state.step)
            set_lr(optimizer, lr)
            train_step(model, optimizer, x, y, running)
            state.step += 1
            recorder.iteration()
            if state.step % eval_every == 0 or state.step == iterations:
                metrics = {"step": state.step, "epoch": state.step / per_epoch, "lr": lr, **running.summary("train")}
                running.reset()
                if not math.isfinite(metrics["train/loss"]):
                    state.time = time.perf_counter() - started
                    recorder.evaluation({**metrics, "time": state.time, "diverged": True})
                    raise Diverged(f"training loss is {metrics['train/loss']} at iteration {state.step}")
                for name, batches in data.evals.items():
                    metrics.update(evaluate(model, batches, name))
                schedule.observe(metrics)
                state.time = time.perf_counter() - started
                metrics["time"] = round(state.time, 3)
                recorder.evaluation(metrics)
                save(state)
            if state.step >= iterations:
                break
    return state


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
NOT_RESULTS = ("device", "resume", "data.root", "data.download", "data.workers", "data.eval_batch_size")


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


def hparams(cfg: Config) -> dict[str, Any]:
    """What TensorBoard's HParams tab shows per run."""
    m = cfg.model
    return {"data": _value(cfg.data.name), "family": _value(m.family), "depth": m.depth, "mode": _value(m.mode),
            "shortcut": _value(m.shortcut), "seed": cfg.seed, "lr": cfg.optim.lr, "batch_size": cfg.data.batch_size,
            "iterations": cfg.schedule.iterations}  # fmt: skip


def run(cfg: Config, run_dir: Path, console=None) -> dict[str, Any]:
    """Train one configured run in `run_dir`, resuming its checkpoint if it has one. Returns
    the last evaluation's metrics."""
    validate(cfg)
    device = pick_device(cfg.device)
    changes = config_changes(run_dir, cfg)
    if changes:
        raise ConfigError(
            f"{run_dir} already holds a run with another config ({'; '.join(changes)}); it is never "
            "overwritten: set name=... (or hydra.run.dir=...) to start a separate run"
        )
    status = read_status(run_dir)
    if status and status["status"] == "complete":
        (console or Console(stderr=True)).print(f"{run_dir} is complete already; skipping it", highlight=False)
        rows = read_metrics(run_dir)
        return rows[-1] if rows else {}
    seed_everything(cfg.seed)
    data = build_data(cfg.data, cfg.seed, device)
    model = build_model(cfg, data.num_classes).to(device)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay)
    schedule = Schedule(cfg.optim.lr, cfg.schedule)
    state = TrainState()

    saved = checkpoint.load_file(Path(cfg.resume)) if cfg.resume else checkpoint.load_latest(run_dir)
    if saved is not None:
        if saved["model_fields"] != model_fields(cfg):
            theirs, ours = saved["model_fields"], model_fields(cfg)
            diff = "; ".join(f"{k}: {theirs.get(k)} vs {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
            raise ConfigError(f"the checkpoint {cfg.resume or run_dir} was made for another model ({diff})")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        state = TrainState(step=saved["step"], time=saved["time"])
        checkpoint.restore_rng_states(saved["rng"])

    def save(state: TrainState) -> None:
        checkpoint.save(run_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "step": state.step, "time": state.time, "config": config_yaml(cfg), "model_fields": model_fields(cfg),
        })  # fmt: skip

    iterations = cfg.schedule.iterations
    eval_every = cfg.eval_every or len(data.train)
    with Recorder(run_dir, iterations, state.step, console) as recorder:
        if state.step:
            recorder.message(f"resuming {run_dir} from iteration {state.step}")
        recorder.describe(config_yaml(cfg), environment(device), hparams(cfg))
        recorder.status("running", state.step)
        try:
            train(model, data, optimizer, schedule, recorder, state, iterations, eval_every, save)
        except Diverged as e:
            recorder.status("diverged", state.step, reason=str(e))
            raise
        recorder.status("complete", state.step, time=round(state.time, 3))
    rows = read_metrics(run_dir)
    return rows[-1] if rows else {}
