"""The training loop: SGD on a plain or residual net, evaluating every `eval_every` iterations.

`train` is a few plain functions that receive objects (model, optimizer, schedule, data, the
run's writer), not the config; resexp.run.lifecycle assembles them and owns the run
directory. Training error is the running error of the augmented mini-batches since the last
evaluation, as in the paper's curves; test error is measured on the whole evaluation set with the
net in eval mode. Under torchrun the loop reads the same: the sums are summed over the processes,
and the writer (resexp.run.writer) agrees rank 0's writes with every process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resexp import distributed
from resexp.data import Data, endless
from resexp.errors import Diverged, Interrupted
from resexp.run import ddp
from resexp.run.checkpoint import TrainState
from resexp.run.evaluate import evaluate
from resexp.run.schedule import Schedule
from resexp.run.signals import StopSignals
from resexp.run.speed import Speed
from resexp.run.step import Running, make_step
from resexp.run.writer import Writer


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
    scaler: torch.amp.GradScaler | None = None  # fp16's gradient scaler (its state is in every checkpoint)


def train(parts: Parts, state: TrainState, eval_every: int, writer: Writer, stop: StopSignals) -> TrainState:
    """Run SGD from `state.step` to the schedule's end; evaluate, record and checkpoint every
    `eval_every` iterations and at the end. Raises Diverged on a non-finite training loss, and
    Interrupted (after a checkpoint) when `stop` has received a signal."""
    iterations, per_epoch = parts.schedule.iterations, len(parts.data.train)
    if state.step >= iterations:  # a run is never trained past its schedule
        return state
    device = next(parts.model.parameters()).device
    running = Running(device, scaled=parts.scaler is not None)
    if state.running and distributed.current().main:  # the sums of all processes; under torchrun rank 0 carries them
        running.load_state_dict(state.running)
    step = make_step(parts.trained or parts.model, parts.optimizer, running, parts.speed, parts.scaler)
    parts.model.train()
    started = time.perf_counter() - state.time
    for x, y in endless(parts.data.train, state.step):
        lr = parts.schedule.lr(state.step)
        step(x, y, lr)
        state.step += 1
        writer.iteration()
        evaluating = state.step % eval_every == 0 or state.step == iterations
        stopping = stop_agreed(stop, state.step, evaluating, device)
        row: dict[str, Any] | None = None
        if evaluating:
            # The training numbers are the running sums since the last evaluation, over every process.
            row = {"step": state.step, "epoch": state.step / per_epoch, "lr": lr, **running.summary("train")}
            running.reset()
            for probe in parts.probes:
                row.update(probe(parts.model))
            if not math.isfinite(row["train/loss"]):  # the same global loss in every process: all stop here
                state.time = time.perf_counter() - started
                writer.diverged({**row, "time": state.time, "diverged": True})
                raise Diverged(f"training loss is {row['train/loss']} at iteration {state.step}")
            ddp.rank0_buffers(parts.model)  # every process evaluates the net rank 0 checkpoints
            for name, batches in parts.data.evals.items():
                row.update(evaluate(parts.model, batches, name, parts.speed))
            parts.schedule.observe(row)
            state.time = time.perf_counter() - started
            row["time"] = round(state.time, 3)
        if evaluating or (stopping and state.step < iterations):
            state.running, state.time = running.state_dict(), time.perf_counter() - started
            writer.evaluation(row, state)
        if state.step >= iterations:
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
