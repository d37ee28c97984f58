"""The training loop: SGD on a plain or residual net, evaluating every `eval_every` iterations.

A run has two phases. Starting (`check`, `start`) reads and checks everything it will need (the
config, the device, the run directory, the dataset, the checkpoint to resume) and writes nothing,
so a mistake found there leaves no trace. Training (`train_run`, around `train`) writes the run
directory; a failure there leaves the run resumable from its last checkpoint. `train` itself is a
few plain functions that receive objects, not the config. Training error is the running error of
the augmented mini-batches since the last evaluation, as in the paper's curves; test error is
measured on the whole evaluation set with the net in eval mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from resexp import checkpoint, distributed
from resexp.checkpoint import Checkpointer, TrainState
from resexp.config import Config, DataName, validate
from resexp.data import Data, DataSource, EvalStream, build_data, endless, source
from resexp.distributed import World
from resexp.errors import ConfigError, Reported, RunDirError, UserError, one_line
from resexp.models import build_net, training_memory
from resexp.recorder import Quiet, Recorder, environment
from resexp.rundir import RunDir
from resexp.schedule import Schedule
from resexp.speed import EAGER, Speed, resolve
from resexp.step import Running, make_step, stage_grad_norms

DEVICES = "auto, cpu, cuda or cuda:N"


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


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


class TrainingFailed(Reported):
    """An error after training started; the run directory is left resumable."""

    def __init__(self, run_dir: Path, step: int, cause: BaseException) -> None:
        super().__init__(
            f"{one_line(cause)} (at iteration {step}; {run_dir} keeps its last checkpoint: "
            "run the same command again to resume)"
        )


class StopSignals:
    """SIGINT and SIGTERM. Before training starts a signal stops the run at once: nothing has been
    written. Once `started` is set, the first one becomes a flag the loop reads between
    iterations, so that the run saves a checkpoint and exits; a second one (not its echo) aborts
    at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # A launcher between the terminal and the run (torchrun, submitit's local controller) forwards
    # the Ctrl-C that the terminal also delivered: the same request arrives twice, milliseconds
    # apart. A second signal within this many seconds of the first is that echo, not a second request.
    ECHO = 0.5

    def __init__(self, second_aborts: bool = True) -> None:
        self.received: int | None = None
        self.first_at = 0.0
        self.started = False
        self.previous: dict[int, Any] = {}
        # Under torchrun a second signal never aborts: torchrun's own SIGKILL, after its grace
        # period, is the abort, and a process that aborted alone would leave the others waiting.
        self.second_aborts = second_aborts

    def handle(self, signum: int, frame: Any) -> None:
        if not self.started:
            raise Aborted(signum, started=False)
        if self.received is None:
            self.received, self.first_at = signum, time.monotonic()
        elif self.second_aborts and time.monotonic() - self.first_at > self.ECHO:
            raise Aborted(signum, started=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclass
class Parts:
    """What one run trains with."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    data: Data
    speed: Speed
    probes: tuple[Callable[[nn.Module], dict[str, float]], ...] = ()  # extra numbers at each evaluation
    trained: nn.Module | None = None  # what the step calls: DDP around `model` under torchrun, else `model`


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The only function that turns config into a model."""
    m = cfg.model
    return build_net(m.family, m.depth, m.mode, m.shortcut, num_classes)


def make_optimizer(
    model: nn.Module, lr: float, momentum: float, weight_decay: float, speed: Speed = EAGER
) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, **speed.optimizer_options()
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device: use {DEVICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name} is not supported: use {DEVICES}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={name} asked for, but no CUDA device is available: use device=cpu or auto")
        if (device.index or 0) >= count:
            raise ConfigError(f"device={name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: Config, device: torch.device, batch_size: int | None = None) -> None:
    """Refuse a net that cannot be trained in the device's memory, before any module is built
    (a depth of 10^9 is a valid 6n+2 and would otherwise hang while building)."""
    m, d = cfg.model, cfg.data
    if d.name == DataName.synthetic:
        size, classes = d.image_size, d.num_classes
    else:
        size, classes = (d.crop_size, 1000) if d.name == DataName.imagenet else (32, 100)
    crops = 10 if d.name == DataName.imagenet and d.ten_crop else 1
    batch_size = batch_size or d.batch_size  # this process's share of the global batch
    params, needed = training_memory(m.family, m.depth, batch_size, size, classes, d.eval_batch_size * crops)
    if d.name == DataName.synthetic:
        needed += (d.train_size + d.test_size) * size * size * 3
    available = device_memory(device)
    if needed > available:
        raise ConfigError(
            f"model.depth={m.depth} at a batch of {batch_size} on {size}x{size} images needs about "
            f"{needed / 2**30:,.1f} GiB to train ({params / 1e6:,.2f}M parameters), more than the "
            f"{available / 2**30:,.1f} GiB of {device}: use a smaller depth or batch size"
        )


def check(cfg: Config) -> tuple[torch.device, Speed]:
    """Everything that can be known wrong about a config before any data is read or any file
    written; the CLI runs it for every job of a sweep before the first one trains."""
    validate(cfg)
    world = distributed.current()
    if cfg.resume is not None and not Path(cfg.resume).expanduser().is_file():
        raise ConfigError(f"resume={cfg.resume} is not a file (resume= takes a checkpoint, e.g. runs/.../last.pt)")
    device = pick_device(distributed.device_for(cfg.device))
    share = world.share(cfg.data.batch_size)
    speed = resolve(cfg.speed, device)
    if world.distributed and speed.cuda_graph:  # not measured under DDP on a GPU yet: eager DDP
        speed = dataclasses.replace(speed, cuda_graph=False)
    check_memory(cfg, device, share)
    return device, speed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, batches: EvalStream, prefix: str, speed: Speed = EAGER) -> dict[str, float]:
    """Loss and error (%) over a whole evaluation set (summed over the processes under torchrun,
    each of which holds a slice of it). Several views of an image have their softmax outputs
    averaged: 5-d batches (B, crops, C, H, W) are multi-crop, a list of (views, C, H, W) tensors
    is the multi-scale test of one image."""
    model.eval()
    loss, errors, count = 0.0, 0, 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for x, y in batches:
        if isinstance(x, list):
            probs = torch.cat([F.softmax(speed.forward(model, v), -1) for v in x]).mean(0, keepdim=True)
        elif x.dim() == 5:
            probs = F.softmax(speed.forward(model, x.flatten(0, 1)), -1).view(x.shape[0], x.shape[1], -1).mean(1)
        else:
            probs = None
            logits = speed.forward(model, x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            errors += (logits.argmax(1) != y).sum().item()
        if probs is not None:
            loss += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
            errors += (probs.argmax(1) != y).sum().item()
        count += len(y)
    model.train()
    loss, errors, count = distributed.sum_([loss, errors, count], device)
    return {f"{prefix}/loss": loss / count, f"{prefix}/error": 100.0 * errors / count}


def train(
    parts: Parts, state: TrainState, eval_every: int, recorder: Recorder, checkpoints: Checkpointer, stop: StopSignals
) -> TrainState:
    """Run SGD from `state.step` to the schedule's end; evaluate, record and checkpoint every
    `eval_every` iterations and at the end. Raises Diverged on a non-finite training loss, and
    Interrupted (after a checkpoint) when `stop` has received a signal."""
    iterations, per_epoch = parts.schedule.iterations, len(parts.data.train)
    device = next(parts.model.parameters()).device
    running, main = Running(device), distributed.current().main
    if state.running and main:  # the sums of all processes; under torchrun rank 0 carries them
        running.load_state_dict(state.running)
    step = make_step(parts.trained or parts.model, parts.optimizer, running, parts.speed)
    parts.model.train()
    started = time.perf_counter() - state.time
    for x, y in endless(parts.data.train, state.step):
        lr = parts.schedule.lr(state.step)
        step(x, y, lr)
        state.step += 1
        recorder.iteration()
        evaluating = state.step % eval_every == 0 or state.step == iterations
        stopping = stop_agreed(stop, state.step, evaluating, device)
        if evaluating:
            train_metrics = running.summary("train", distributed.sum_(running.totals(), device))
            metrics = {"step": state.step, "epoch": state.step / per_epoch, "lr": lr, **train_metrics}
            running.reset()
            for probe in parts.probes:
                metrics.update(probe(parts.model))
            if not math.isfinite(metrics["train/loss"]):
                state.time = time.perf_counter() - started
                recorder.evaluation({**metrics, "time": state.time, "diverged": True})
                raise Diverged(f"training loss is {metrics['train/loss']} at iteration {state.step}")
            distributed.rank0_buffers(parts.model)
            for name, batches in parts.data.evals.items():
                metrics.update(evaluate(parts.model, batches, name, parts.speed))
            parts.schedule.observe(metrics)
            state.time = time.perf_counter() - started
            recorder.evaluation({**metrics, "time": round(state.time, 3)})
        if evaluating or (stopping and state.step < iterations):
            loss, errors, count = distributed.sum_(running.totals(), device)
            state.running = {"loss": loss, "errors": int(errors), "count": int(count)}
            state.time = time.perf_counter() - started
            checkpoints.save(state)
        if state.step == iterations:
            return state
        if stopping:
            raise Interrupted(stopping)
    raise AssertionError("endless() ended")


STOP_POLL = 10  # under torchrun, iterations between agreements on a stop signal (each is a sync)


def stop_agreed(stop: StopSignals, step: int, evaluating: bool, device: torch.device) -> int:
    """The signal to stop on after this iteration, 0 for none. Under torchrun the processes agree
    every STOP_POLL iterations and at each evaluation, so that a signal to any of them stops all
    of them after the same iteration."""
    received = stop.received or 0
    if not distributed.current().distributed:
        return received
    if step % STOP_POLL and not evaluating:
        return 0
    return int(distributed.max_([received], device)[0])


def admit(cfg: Config, run: RunDir, data_source: DataSource) -> str | None:
    """Refuse a run directory that holds a run of another config or of other data (a run is
    never overwritten); return the status of the run already there, if any."""
    changes = run.config_changes(cfg)
    if changes:
        raise RunDirError(
            f"{run.path} already holds a run with another config ({'; '.join(changes)}); it is never "
            "overwritten: set name=... (or hydra.run.dir=...) to start a separate run"
        )
    change = run.data_change(data_source.identity())
    if change:
        raise RunDirError(
            f"{run.path} holds a run of other data: {change}; set name=... to train on this data separately"
        )
    return run.status().get("status")


@dataclass
class Start:
    """A run checked and assembled, with nothing written yet."""

    parts: Parts
    state: TrainState
    checkpoints: Checkpointer
    rows: list[dict[str, Any]]
    data: DataSource


class PeerFailed(UserError):
    """Another process of a torchrun run failed where this one did not; it reported why."""


@dataclass
class Decision:
    """What rank 0 found in the run directory, sent to every process (only rank 0 reads it)."""

    skip: str | None = None  # the run is "complete" or "diverged" already
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    saved: dict[str, Any] | None = None  # the checkpoint to resume, if any
    origin: str = ""
    error: UserError | None = None


def decide(cfg: Config, run: RunDir, data_source: DataSource, warn: Callable[[str], None]) -> Decision:
    """Whether the run is to be skipped, and what it resumes from (rank 0 alone reads the folder)."""
    status = admit(cfg, run, data_source)
    if status in ("complete", "diverged"):
        warn(
            f"{run.path} is {status} already; skipping it"
            + (" (delete the folder to try again)" * (status == "diverged"))
        )
        return Decision(skip=status)
    rows = run.metrics(warn, repair=True)
    saved, origin = checkpoint.load_latest(run, warn), str(run.path)
    if saved is not None and cfg.resume:
        warn(
            f"{run.path} has a checkpoint of its own (iteration {saved['step']}): resuming from it, not from "
            f"resume={cfg.resume}"
        )
    elif saved is None and cfg.resume:
        saved, origin = checkpoint.load_file(Path(cfg.resume).expanduser()), cfg.resume
    elif saved is None and rows:
        raise RunDirError(
            f"{run.path} has metrics up to iteration {rows[-1]['step']} but no checkpoint to resume "
            f"from ({checkpoint.LAST} and {checkpoint.PREVIOUS} are gone): delete the folder to "
            "train it again from the start"
        )
    return Decision(rows=rows, saved=saved, origin=origin)


def together(action: Callable[[], Any], device: torch.device) -> Any:
    """Run `action` in every process; if it fails in any, fail in all (the process that failed
    with its own error, marked to be reported; the others with PeerFailed)."""
    failure: Exception | None = None
    try:
        result = action()
    except Exception as e:  # a missing file on one node, memory, ...
        failure, result = e, None
    if distributed.any_(failure is not None, device):
        if failure is not None:
            failure.own = True
            raise failure
        raise PeerFailed("another process of this torchrun run could not start (it says why)")
    return result


def start(
    cfg: Config, run: RunDir, data_source: DataSource, device: torch.device, speed: Speed, console: Console
) -> Start | None:
    """Read and check everything the run needs, writing nothing; None when there is nothing to do
    (the run is complete or diverged already). Under torchrun rank 0 reads the run directory and
    sends what it found to the others; each process builds its own share of the data."""
    world = distributed.current()
    warn = lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    if world.main:
        try:
            decision = decide(cfg, run, data_source, warn)
        except UserError as e:
            decision = Decision(error=e)
    else:
        decision = None
    decision = distributed.broadcast(decision)
    if decision.error is not None:
        raise decision.error
    if decision.skip:
        return None
    seed_everything(cfg.seed)

    def build() -> tuple[Data, nn.Module]:
        data = build_data(cfg.data, cfg.seed, device, world)
        return data, speed.place(build_model(cfg, data.num_classes).to(device))

    data, model = together(build, device)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, speed)
    schedule = Schedule(cfg.optim.lr, cfg.schedule)
    checkpoints = Checkpointer(run, cfg, model, optimizer, schedule, writes=world.main)
    saved = decision.saved
    state = TrainState() if saved is None else checkpoints.restore(saved, decision.origin)
    trained = distributed.wrap(model, device, cfg.model.sync_bn)  # after the restore: DDP sends rank 0's weights
    probes = (stage_grad_norms,) if cfg.log.grad_norms else ()
    parts = Parts(model, optimizer, schedule, data, speed, probes, trained)
    return Start(parts, state, checkpoints, decision.rows, data_source)


def run(cfg: Config, run_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """Train one configured run in `run_dir`, resuming its checkpoint if it has one. Returns the
    last evaluation's metrics. Errors before training are UserErrors (nothing written); errors
    during training are TrainingFailed (the run stays resumable). Under torchrun every process
    calls this; rank 0 alone holds the lock and writes the directory."""
    console = console or Console(stderr=True)
    world = distributed.current()
    device, speed = check(cfg)
    distributed.init(device)
    folder = RunDir(run_dir)
    lock = folder.lock() if world.main else contextlib.nullcontext()
    with StopSignals(second_aborts=not world.distributed) as stop, lock:
        began = start(cfg, folder, source(cfg.data), device, speed, console)
        if began is not None:
            stop.started = True
            train_run(cfg, folder, began, device, console, stop)
            distributed.sum_([0.0], device)  # every process waits for rank 0's last writes
        rows = folder.metrics() if world.main else []
    return rows[-1] if rows else {}


def notices(cfg: Config, speed: Speed, world: World) -> list[str]:
    """What the run does differently from what was asked, said once when it starts."""
    out = []
    if world.distributed and resolve(cfg.speed, torch.device(speed.device_type)).cuda_graph:
        out.append(
            "note: the CUDA-graph step is not used under torchrun (not yet measured with DDP on a GPU): "
            "training with eager DDP"
        )
    if cfg.model.sync_bn and not world.distributed:
        out.append("note: model.sync_bn=true has no effect in one process (its batch is the global batch)")
    return out


def train_run(
    cfg: Config, run: RunDir, began: Start, device: torch.device, console: Console, stop: StopSignals
) -> None:
    state, iterations, world = began.state, cfg.schedule.iterations, distributed.current()
    eval_every = cfg.eval_every or len(began.parts.data.train)
    side_effects = Recorder(run, iterations, state.step, began.rows, console) if world.main else Quiet()
    with side_effects as recorder:
        try:
            if state.step:
                recorder.message(f"resuming {run.path} from iteration {state.step}")
            for line in notices(cfg, began.parts.speed, world):
                recorder.message(line)
            env = {**environment(device), "speed": began.parts.speed.describe(), **processes(cfg, world)}
            recorder.describe(cfg, began.data.identity(), env)
            recorder.status("running", state.step)
            train(began.parts, state, eval_every, recorder, began.checkpoints, stop)
        except Diverged as e:
            recorder.status("diverged", state.step, reason=str(e))
            raise
        except Aborted as e:
            recorder.status("interrupted", state.step, signal=str(e), saved=False)
            raise
        except Interrupted as e:
            recorder.status("interrupted", state.step, signal=str(e))
            recorder.message(
                f"{e} at iteration {state.step}: checkpoint saved in {run.path}; run the same command again to resume"
            )
            raise
        except Exception as e:
            with contextlib.suppress(OSError):  # the disk that failed the run may refuse this too
                recorder.status("failed", state.step, reason=one_line(e))
            lost = distributed.peer_error(e)
            failed = TrainingFailed(run.path, state.step, distributed.PeerLost() if lost else e)
            failed.own = not lost
            raise failed from e
        recorder.status("complete", state.step, time=round(state.time, 3))


def processes(cfg: Config, world: World) -> dict[str, Any]:
    """How many processes trained the run (environment.json): a run may resume under another number."""
    return {"world_size": world.size, "batch_per_process": cfg.data.batch_size // world.size}
