"""The life of one run: check, admit, start, train, finish.

`run` is what `resexp train` calls for each job of a command:

1. check: everything about the config that can be known wrong before any data is read or any file
   written (ranges and rules, the device, the memory the net needs). The CLI checks every job of a
   sweep this way before the first one trains.
2. admit (rank 0, holding the run directory's lock): the folder holds nothing, or a run of the
   same identity on the same data whose files agree with each other; a damaged or foreign folder
   is refused with one line. What the folder holds decides what to do: skip a complete run, refuse
   a diverged one, resume from the latest checkpoint, or start.
3. start: build the data, the net, the optimizer and the schedule, and restore the checkpoint;
   nothing is written until here, so a mistake leaves no trace.
4. train (resexp.run.loop): the loop writes metrics, TensorBoard and checkpoints through the recorder
   and the checkpointer; its status ladder is running -> complete | interrupted | diverged | failed.

Under torchrun every process runs this; rank 0 alone locks, reads and writes the run directory and
tells the others what it found, and every step that can fail on one process is agreed by all
(`distributed.all_or_none`), so that a failure anywhere ends every process within seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from resexp import distributed, identity
from resexp.config import Config, DataName, validate
from resexp.data import Data, DataSource, build_data, source
from resexp.device import pick_device, seed_everything
from resexp.distributed import World
from resexp.errors import (
    Aborted,
    ConfigError,
    DamagedRun,
    Diverged,
    Interrupted,
    OwnTrainingFailure,
    PeerFailed,
    PeerLost,
    RunDirError,
    TrainingFailed,
    UserError,
    one_line,
)
from resexp.nets.build import build_model
from resexp.nets.spec import net_spec
from resexp.run import ddp
from resexp.run.checkpoint import Checkpointer, TrainState
from resexp.run.loop import Parts, train
from resexp.run.recorder import Recorder, environment
from resexp.run.schedule import Schedule
from resexp.run.setup import check_memory, make_optimizer
from resexp.run.signals import StopSignals
from resexp.run.speed import Speed, resolve
from resexp.run.step import stage_grad_norms
from resexp.run.writer import Writer
from resexp.rundir import checkpoints
from resexp.rundir.folder import CONFIG, DATA, METRICS, RunDir

Warn = Callable[[str], None]


def check(cfg: Config) -> tuple[torch.device, Speed]:
    """Everything that can be known wrong about a config before any data is read or any file
    written; the CLI runs it for every job of a sweep before the first one trains."""
    validate(cfg)
    world = distributed.current()
    if cfg.resume is not None and not Path(cfg.resume).expanduser().is_file():
        raise ConfigError(f"resume={cfg.resume} is not a file (resume= takes a checkpoint, e.g. runs/.../last.pt)")
    device = pick_device(distributed.device_for(cfg.device))
    most = 4 * (os.cpu_count() or 1)  # DataLoader workers are processes: beyond this they only fight for cores
    if cfg.data.name == DataName.imagenet and cfg.data.workers > most:
        raise ConfigError(f"data.workers={cfg.data.workers} must be at most {most} (4 per core of this machine)")
    share = world.share(cfg.data.batch_size)
    check_batch_norm(cfg, share)
    speed = resolve(cfg.speed, device)
    if world.distributed and speed.cuda_graph:  # not measured under DDP on a GPU yet: eager DDP
        speed = dataclasses.replace(speed, cuda_graph=False)
    check_memory(cfg, device, share)
    return device, speed


def check_batch_norm(cfg: Config, batch: int) -> None:
    """Batch norm in training mode needs more than one value per channel: a batch of one image
    whose last stage is 1x1 cannot train (torch would fail at iteration 0)."""
    d, m = cfg.data, cfg.model
    if m.norm != "batch":
        return
    size = d.image_size if d.name == DataName.synthetic else d.crop_size if d.name == DataName.imagenet else 32
    side = size
    if m.family == "imagenet":
        side = math.ceil(math.ceil(side / 2) / 2)  # the 7x7/2 stem and the max-pool
    for stage in net_spec(m.family, m.depth, m.body).stages:
        side = math.ceil(side / stage.stride)
    if batch * side * side < 2:
        raise ConfigError(
            f"data.batch_size={d.batch_size} on {size}x{size} images leaves {batch * side * side} value per channel "
            f"in the last stage ({side}x{side}): batch norm needs at least 2; use a larger batch or larger images"
        )


def admit(cfg: Config, run: RunDir, data_source: DataSource) -> str | None:
    """Refuse a run directory that is damaged, or holds a run of another identity or of other data
    (a run is never overwritten); return the status of the run already there, if any."""
    not_imported(run)
    missing = run.missing()
    if missing:
        raise damaged(run, f"it has {', '.join(sorted(set(run_files(run))))} but no {' and no '.join(missing)}")
    changes = run.config_changes(cfg)
    if changes:
        raise RunDirError(
            f"{run.path} already holds a run with another config ({'; '.join(changes)}); it is never "
            "overwritten: set name=... (or hydra.run.dir=...) to start a separate run"
        )
    change = run.data_change(data_source.identity(), data_source.legacy)
    if change:
        raise RunDirError(
            f"{run.path} holds a run of other data: {change}; set name=... to train on this data separately"
        )
    return run.status().get("status")


def not_imported(run: RunDir) -> None:
    """A folder made by `resexp import` is not a run to continue: its optimizer state and data
    order were never published."""
    provenance = run.imported()
    if provenance is not None:
        raise RunDirError(
            f"{run.path} holds a net imported from {provenance.get('source', '?')} ({provenance.get('file', '?')}), "
            "not a run trained here: resexp train does not continue it (resexp eval and analyze read it); set "
            "name=... to train a run of your own"
        )


def run_files(run: RunDir) -> list[str]:
    return [p.name for p in run.path.iterdir() if not p.name.startswith(".")]


def damaged(run: RunDir, what: str) -> DamagedRun:
    return DamagedRun(
        f"{run.path} is damaged: {what}; restore the folder from a backup, or delete it to train the run again "
        "from the start"
    )


@dataclass
class Decision:
    """What rank 0 found in the run directory, sent to every process (only rank 0 reads it)."""

    skip: bool = False  # the run is complete already
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    saved: dict[str, Any] | None = None  # the checkpoint to resume, if any
    origin: str = ""
    error: Exception | None = None


def decide(cfg: Config, run: RunDir, data_source: DataSource, warn: Warn) -> Decision:
    """What the run directory holds, and so what to do. Status is read from the checkpoint and
    the metrics, never trusted over them: a checkpoint at the schedule's end is a complete run
    whatever status.json says (a SIGKILL or a full disk can leave it saying running)."""
    status = admit(cfg, run, data_source)
    digest = identity.digest(identity.of(cfg))
    rows = run.metrics(warn, repair=True)
    if rows and (rows[-1].get("diverged") or not math.isfinite(rows[-1]["train/loss"])):
        raise Diverged(
            f"{run.path} diverged at iteration {rows[-1]['step']} (training loss {rows[-1]['train/loss']}); "
            "delete the folder to train it again"
        )
    saved, origin = checkpoints.load_latest(run, warn), str(run.path)
    iterations = cfg.schedule.iterations
    if saved is not None:
        agrees(run, saved, cfg, data_source)
        written = saved.get("metrics")  # what the rows up to the checkpoint hashed to when it was saved
        if written is not None and written != run.metrics_digest([r for r in rows if r["step"] <= saved["step"]]):
            what = "is gone" if not run.file(METRICS).exists() else "was changed after the run wrote it"
            raise damaged(run, f"its checkpoint is at iteration {saved['step']} but {METRICS} {what}")
        end = rows[-1]["step"] if rows else 0
        if saved["step"] >= iterations and end < iterations:  # the last evaluation is the schedule's end
            raise damaged(run, f"its checkpoint is at iteration {saved['step']} but {METRICS} ends at iteration {end}")
    if (saved is not None and saved["step"] >= iterations) or (
        saved is None and rows and rows[-1]["step"] >= iterations
    ):
        if status != "complete" or run.status().get("identity") not in (None, digest):
            step = max(saved["step"] if saved else 0, rows[-1]["step"] if rows else 0)
            run.set_status("complete", step, iterations, identity=digest)
            said = status if status != "complete" else "complete, of another identity"
            warn(f"{run.path} is complete already (status.json said {said or 'nothing'}; corrected); skipping it")
        else:
            warn(f"{run.path} is complete already; skipping it")
        return Decision(skip=True)
    if saved is not None and cfg.resume:
        warn(
            f"{run.path} has a checkpoint of its own (iteration {saved['step']}): resuming from it, not from "
            f"resume={cfg.resume}"
        )
    elif saved is None and cfg.resume:
        saved, origin = checkpoints.load_file(Path(cfg.resume).expanduser()), cfg.resume
    elif saved is None and rows:
        raise damaged(
            run,
            f"it has metrics up to iteration {rows[-1]['step']} but no checkpoint to resume from "
            f"({checkpoints.LAST} and {checkpoints.PREVIOUS} are gone)",
        )
    return Decision(rows=rows, saved=saved, origin=origin)


def agrees(run: RunDir, saved: dict[str, Any], cfg: Config, data_source: DataSource) -> None:
    """The checkpoint was trained as config.yaml and data.json say (checkpoints of resexp 0.3 on
    carry their identity and data fingerprint; older ones are taken as they are)."""
    if saved.get("identity") is not None:
        wrong = identity.differences(identity.of(saved["identity"]), identity.of(cfg))
        if wrong:
            raise damaged(
                run, f"its checkpoint was trained with another config than {CONFIG} says ({'; '.join(wrong)})"
            )
    data = saved.get("data")
    if data is not None and data != data_source.fingerprint and data not in data_source.legacy:
        raise damaged(
            run,
            f"its checkpoint was trained on other data (fingerprint {data}) than {data_source.source} "
            f"(fingerprint {data_source.fingerprint}) that {DATA} and this command name",
        )


def check_metrics(run: RunDir, rows: list[dict[str, Any]], state: TrainState, eval_every: int, iterations: int) -> None:
    """metrics.jsonl holds every evaluation from where this run began to its checkpoint (rows after
    the checkpoint are dropped and redone when it resumes)."""
    if not state.step:
        return
    expected = [s for s in range(eval_every, state.step + 1, eval_every) if s > (state.start_step or 0)]
    if state.step == iterations and iterations % eval_every:
        expected.append(iterations)
    if state.start_step is None:  # a checkpoint of resexp 0.2 does not say where its run began: the last one
        expected = expected[-1:]
    have = {r["step"] for r in rows}
    lost = [s for s in expected if s not in have]
    if lost:
        shown = ", ".join(map(str, lost[:5])) + (" ..." if len(lost) > 5 else "")
        raise damaged(
            run,
            f"its checkpoint is at iteration {state.step} but {METRICS} lacks the evaluations at {shown} "
            f"({len(lost)} of {len(expected)})",
        )


@dataclass
class Start:
    """A run checked and assembled, with nothing written yet."""

    parts: Parts
    state: TrainState
    checkpoints: Checkpointer
    rows: list[dict[str, Any]]
    data: DataSource
    eval_every: int


def start(
    cfg: Config, run: RunDir, data_source: DataSource, device: torch.device, speed: Speed, console: Console
) -> Start | None:
    """Read and check everything the run needs, writing nothing; None when there is nothing to do
    (the run is complete). Under torchrun rank 0 reads the run directory and sends what it found
    to the others; each process builds its own share of the data."""
    world = distributed.current()
    warn = lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    decision = None
    if world.main:
        try:
            decision = decide(cfg, run, data_source, warn)
        except (UserError, Diverged) as e:
            decision = Decision(error=e)
    decision = distributed.broadcast(decision)
    if decision.error is not None:
        raise decision.error
    if decision.skip:
        return None
    seed_everything(cfg.seed)

    def build() -> tuple[Data, nn.Module]:
        data = build_data(cfg.data, cfg.seed, device, world)
        return data, speed.place(build_model(cfg, data.num_classes).to(device))

    data, model = distributed.all_or_none(build)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, speed)
    schedule = Schedule(cfg.optim.lr, cfg.schedule)
    saved = decision.saved
    monitor = (
        "val/error" if "val" in data.evals else "test/error"
    )  # best.pt: never chosen on the test set if a val set exists
    before = [r for r in decision.rows if saved is not None and r["step"] <= saved["step"]]
    scaler = speed.scaler()
    checkpoints = Checkpointer(
        run, cfg, model, optimizer, schedule, data_source.fingerprint, world.main, monitor, before, scaler
    )
    state = TrainState() if saved is None else checkpoints.restore(saved, decision.origin)
    eval_every = cfg.eval_every or len(data.train)
    check_metrics(run, decision.rows, state, eval_every, cfg.schedule.iterations)
    trained = ddp.wrap(model, device, cfg.model.sync_bn)  # after the restore: DDP sends rank 0's weights
    probes = (stage_grad_norms,) if cfg.log.grad_norms else ()
    parts = Parts(model, optimizer, schedule, data, speed, probes, trained, scaler)
    return Start(parts, state, checkpoints, decision.rows, data_source, eval_every)


def run(cfg: Config, run_dir: Path, console: Console | None = None, named: bool = False) -> dict[str, Any]:
    """Train one configured run in `run_dir`, resuming its checkpoint if it has one. Returns the
    last evaluation's metrics. Errors before training are UserErrors (nothing written); errors
    during training are TrainingFailed (the run stays resumable). Under torchrun every process
    calls this; rank 0 alone holds the lock and writes the directory. `named`: each console line
    starts with the run's folder name (runs of a sweep training side by side share the console)."""
    console = console or Console(stderr=True)
    world = distributed.current()
    distributed.join()  # before anything can fail in one process alone: every failure below is agreed
    device, speed, data_source = distributed.all_or_none(lambda: (*check(cfg), source(cfg.data)))
    distributed.init(device)
    folder = RunDir(run_dir)
    with StopSignals(second_aborts=not world.distributed) as stop, locked(folder, device):
        began = start(cfg, folder, data_source, device, speed, console)
        if began is not None:
            stop.started = True
            train_run(cfg, folder, began, device, console, stop, named)
            distributed.barrier(device)  # every process waits for rank 0's last writes
        rows = folder.metrics() if world.main else []
    return rows[-1] if rows else {}


@contextlib.contextmanager
def locked(folder: RunDir, device: torch.device) -> Iterator[None]:
    """Rank 0 holds the run directory's lock; whether it got it is agreed by every process, so a
    refusal (another command is training this run) ends all of them instead of leaving the others
    waiting for rank 0's decision."""
    lock = folder.lock() if distributed.current().main else contextlib.nullcontext()
    distributed.all_or_none(lock.__enter__)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def speed_notices(cfg: Config, speed: Speed, world: World) -> list[str]:
    """What the run does differently from what was asked, said once when it starts."""
    out = []
    if world.distributed and resolve(cfg.speed, torch.device(speed.device_type)).cuda_graph:
        out.append(
            "note: the CUDA-graph step is not used under torchrun (not yet measured with DDP on a GPU): "
            "training with eager DDP"
        )
    if speed.precision == "fp16" and speed.device_type == "cuda" and cfg.speed.cuda_graph is None:
        out.append(
            "note: the CUDA-graph step is not used with fp16 (its gradient scaler checks every step's gradients "
            "for overflow on the CPU): training with eager steps"
        )
    if speed.device_type == "mps" and cfg.speed.fused_optimizer:
        out.append("note: speed.fused_optimizer=true is off on a Mac's GPU (not measured there): unfused SGD")
    if cfg.model.sync_bn and not world.distributed:
        out.append("note: model.sync_bn=true has no effect in one process (its batch is the global batch)")
    return out


def train_run(
    cfg: Config, run: RunDir, began: Start, device: torch.device, console: Console, stop: StopSignals, named: bool
) -> None:
    """The training phase: every write to the run directory, and its status at the end."""
    state, iterations, world = began.state, cfg.schedule.iterations, distributed.current()
    digest = identity.digest(identity.of(cfg))
    label = run.path.name if named else None
    writer = Writer.open(
        lambda: Recorder(run, iterations, state.step, began.rows, console, digest, label), began.checkpoints
    )
    with writer:
        try:
            if state.step:
                writer.message(f"resuming {run.path} from iteration {state.step}")
            for line in speed_notices(cfg, began.parts.speed, world):
                writer.message(line)
            env = {**environment(device), "speed": began.parts.speed.describe(), **processes(cfg, world)}
            writer.start(cfg, began.data.identity(), env, state.step)
            train(began.parts, state, began.eval_every, writer, stop)
        except Diverged as e:
            writer.stopped("diverged", state.step, reason=str(e))
            raise
        except Aborted as e:
            writer.stopped("interrupted", state.step, signal=str(e), saved=False)
            raise
        except Interrupted as e:
            writer.stopped("interrupted", state.step, signal=str(e))
            writer.message(
                f"{e} at iteration {state.step}: checkpoint saved in {run.path}; run the same command again to resume"
            )
            raise
        except Exception as e:
            with contextlib.suppress(OSError):  # the disk that failed the run may refuse this too
                writer.stopped("failed", state.step, reason=one_line(e))
            cause, own = e, not isinstance(e, PeerFailed)
            if distributed.peer_lost(e):  # another process is gone: its own message says why
                cause, own = PeerLost(), False
            failure = OwnTrainingFailure if own else TrainingFailed
            raise failure(run.path, state.step, cause, checkpoint=run.has_checkpoint()) from e
        writer.status("complete", state.step, time=round(state.time, 3))


def processes(cfg: Config, world: World) -> dict[str, Any]:
    """How many processes trained the run (environment.json): a run may resume under another number."""
    return {"world_size": world.size, "batch_per_process": cfg.data.batch_size // world.size}
