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
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from resexp import checkpoint
from resexp.config import Config, ConfigError, _value, validate
from resexp.data import Data, build_data
from resexp.models import build_net
from resexp.recorder import Recorder, environment, read_metrics
from resexp.rundir import check_run_dir, config_yaml, model_fields
from resexp.schedule import Schedule
from resexp.speed import EAGER, Speed, resolve
from resexp.step import Running, make_step


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a checkpoint was saved. A BaseException, so that it ends a
    whole sweep instead of one run of it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a flag the loop reads between iterations (so the run
    can save and exit cleanly); a second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # the second signal: stop now, no checkpoint
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclass
class TrainState:
    step: int = 0  # iterations done
    time: float = 0.0  # seconds spent training and evaluating, summed over resumes
    running: dict[str, Any] | None = None  # training loss/error sums since the last evaluation


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The only function that turns config into a model."""
    m = cfg.model
    return build_net(_value(m.family), m.depth, _value(m.mode), _value(m.shortcut), num_classes)


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                   speed: Speed = EAGER) -> torch.optim.Optimizer:  # fmt: skip
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           **speed.optimizer_options())  # fmt: skip


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


@torch.no_grad()
def evaluate(model: nn.Module, batches, prefix: str, speed: Speed = EAGER) -> dict[str, float]:
    """Loss and error (%) over a whole evaluation set. 5-d batches (B, crops, C, H, W) are
    multi-crop: the crops' softmax outputs are averaged."""
    model.eval()
    loss, errors, count = 0.0, 0, 0
    for x, y in batches:
        if x.dim() == 5:
            probs = F.softmax(speed.forward(model, x.flatten(0, 1)), -1).view(x.shape[0], x.shape[1], -1).mean(1)
            loss += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
            errors += (probs.argmax(1) != y).sum().item()
        else:
            logits = speed.forward(model, x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            errors += (logits.argmax(1) != y).sum().item()
        count += len(y)
    model.train()
    return {f"{prefix}/loss": loss / count, f"{prefix}/error": 100.0 * errors / count}


def train(model: nn.Module, data: Data, optimizer: torch.optim.Optimizer, schedule: Schedule, recorder: Recorder,
          state: TrainState, iterations: int, eval_every: int, save, stop: StopSignals,
          speed: Speed = EAGER) -> TrainState:  # fmt: skip
    """Run SGD from `state.step` to `iterations`; evaluate, record and checkpoint every
    `eval_every` iterations and at the end. Raises Diverged on a non-finite training loss, and
    Interrupted (after a checkpoint) when `stop` has received a signal."""
    per_epoch = len(data.train)
    device = next(model.parameters()).device
    running = Running(device)
    if state.running:
        running.load_state_dict(state.running)
    step = make_step(model, optimizer, running, speed)
    model.train()
    started = time.perf_counter() - state.time
    while state.step < iterations:
        epoch, start = divmod(state.step, per_epoch)
        for x, y in data.train.batches(epoch, start):
            lr = schedule.lr(state.step)
            step(x, y, lr)
            state.step += 1
            recorder.iteration()
            if stop.received is not None and state.step % eval_every and state.step < iterations:
                state.time, state.running = time.perf_counter() - started, running.state_dict()
                save(state)
                raise Interrupted(stop.received)
            if state.step % eval_every == 0 or state.step == iterations:
                metrics = {"step": state.step, "epoch": state.step / per_epoch, "lr": lr, **running.summary("train")}
                running.reset()
                if not math.isfinite(metrics["train/loss"]):
                    state.time = time.perf_counter() - started
                    recorder.evaluation({**metrics, "time": state.time, "diverged": True})
                    raise Diverged(f"training loss is {metrics['train/loss']} at iteration {state.step}")
                for name, batches in data.evals.items():
                    metrics.update(evaluate(model, batches, name, speed))
                schedule.observe(metrics)
                state.time = time.perf_counter() - started
                metrics["time"] = round(state.time, 3)
                recorder.evaluation(metrics)
                state.running = running.state_dict()
                save(state)
                if stop.received is not None and state.step < iterations:
                    raise Interrupted(stop.received)
            if state.step >= iterations:
                break
    return state


def hparams(cfg: Config) -> dict[str, Any]:
    """What TensorBoard's HParams tab shows per run."""
    m = cfg.model
    return {"data": _value(cfg.data.name), "family": _value(m.family), "depth": m.depth, "mode": _value(m.mode),
            "shortcut": _value(m.shortcut), "seed": cfg.seed, "lr": cfg.optim.lr, "batch_size": cfg.data.batch_size,
            "iterations": cfg.schedule.iterations}  # fmt: skip


def restore(saved: dict[str, Any], cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer,
            schedule: Schedule, source: str) -> TrainState:  # fmt: skip
    if saved["model_fields"] != model_fields(cfg):
        theirs, ours = saved["model_fields"], model_fields(cfg)
        diff = "; ".join(f"{k}: {theirs.get(k)} vs {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
        raise ConfigError(f"the checkpoint {source} was made for another model ({diff})")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    checkpoint.restore_rng_states(saved["rng"])
    return TrainState(step=saved["step"], time=saved["time"], running=saved["running"])


def run(cfg: Config, run_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """Train one configured run in `run_dir`, resuming its checkpoint if it has one. Returns
    the last evaluation's metrics."""
    console = console or Console(stderr=True)
    validate(cfg)
    device = pick_device(cfg.device)
    speed = resolve(cfg.speed, device)  # before any data is read: bad combinations fail at once
    with checkpoint.RunLock(run_dir):
        if check_run_dir(run_dir, cfg, console):
            train_run(cfg, run_dir, device, speed, console)
    rows = read_metrics(run_dir)
    return rows[-1] if rows else {}


def train_run(cfg: Config, run_dir: Path, device: torch.device, speed: Speed, console: Console) -> None:
    seed_everything(cfg.seed)
    data = build_data(cfg.data, cfg.seed, device)
    model = speed.place(build_model(cfg, data.num_classes).to(device))
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, speed)
    schedule = Schedule(cfg.optim.lr, cfg.schedule)
    state = TrainState()
    warn = lambda text: console.print(text, highlight=False, markup=False)  # noqa: E731
    saved = checkpoint.load_file(Path(cfg.resume)) if cfg.resume else checkpoint.load_latest(run_dir, warn)
    if saved is not None:
        state = restore(saved, cfg, model, optimizer, schedule, cfg.resume or str(run_dir))

    def save(state: TrainState) -> None:
        checkpoint.save(run_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "step": state.step, "time": state.time, "running": state.running, "config": config_yaml(cfg),
            "model_fields": model_fields(cfg),
        })  # fmt: skip

    iterations = cfg.schedule.iterations
    eval_every = cfg.eval_every or len(data.train)
    with Recorder(run_dir, iterations, state.step, console) as recorder, StopSignals() as stop:
        if state.step:
            recorder.message(f"resuming {run_dir} from iteration {state.step}")
        recorder.describe(config_yaml(cfg), {**environment(device), "speed": speed.describe()}, hparams(cfg))
        recorder.status("running", state.step)
        try:
            train(model, data, optimizer, schedule, recorder, state, iterations, eval_every, save, stop, speed)
        except Diverged as e:
            recorder.status("diverged", state.step, reason=str(e))
            raise
        except Interrupted as e:
            recorder.status("interrupted", state.step, signal=str(e))
            recorder.message(f"{e} at iteration {state.step}: checkpoint saved in {run_dir}; "
                             "run the same command again to resume")  # fmt: skip
            raise
        recorder.status("complete", state.step, time=round(state.time, 3))
