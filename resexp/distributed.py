"""One run on several processes: torchrun's environment, the process group, and what the loop
needs of it (sums over processes, a decision taken together, per-process batch shares).

torchrun (`torchrun --standalone --nproc_per_node=N -m resexp train ...`, or its multi-node
rendezvous) starts N copies of the same command and tells each its RANK, LOCAL_RANK and
WORLD_SIZE; nothing here launches processes. Without those variables a run is one process, a
`World` of size 1, and every function below is the identity, so the loop reads the same either way.
Gradients are averaged by DistributedDataParallel (resexp.run.ddp wraps the model); the data is
split by resexp.data (each rank takes its share of every global batch, and of the evaluation sets).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from resexp.errors import ConfigError, OwnFailure, PeerFailed, PeerLost, one_line

T = TypeVar("T")


ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT")  # where the processes meet (env:// rendezvous)


TIMEOUT = datetime.timedelta(minutes=10)  # a collective that waits longer than this fails instead of hanging


@dataclass(frozen=True)
class World:
    """Which process of how many this is. `main` (rank 0) alone writes the run directory."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, batch_size: int, what: str = "data.batch_size") -> int:
        """This process's part of a global batch; refuse a batch the processes cannot split evenly."""
        if batch_size % self.size:
            raise ConfigError(
                f"{what}={batch_size} is the global batch and does not divide among {self.size} processes: "
                f"use a multiple of {self.size} (e.g. {batch_size // self.size * self.size or self.size})"
            )
        return batch_size // self.size


ONE = World()


class GroupState:
    """Whether a collective of this process has failed: then the group is broken (a peer is gone,
    or the network between them), whatever the error's type or text. Known by where the error
    came from (a collective below, or DDP's gradient all-reduce), never by its message."""

    broken = False


@contextlib.contextmanager
def collective() -> Iterator[None]:
    """Around one collective call: its failure is a lost peer (PeerLost), and is remembered."""
    try:
        yield
    except Exception as e:
        GroupState.broken = True
        raise PeerLost() from e


def peer_lost(e: BaseException) -> bool:
    """Whether `e` ended this process because the group broke: a collective of this process failed
    (NCCL also says so by type, DistBackendError)."""
    lost = current().distributed and (GroupState.broken or isinstance(e, (PeerLost, dist.DistBackendError)))
    GroupState.broken |= lost  # remembered: the group cannot be left together any more (close)
    return lost


@functools.cache
def current() -> World:
    """The world torchrun describes in the environment (one process when it describes none)."""
    if "WORLD_SIZE" not in os.environ:
        return ONE
    try:
        rank, local, size = (int(os.environ[k]) for k in ENV)
    except (KeyError, ValueError):
        shown = ", ".join(f"{k}={os.environ.get(k)}" for k in ENV)
        raise ConfigError(
            f"WORLD_SIZE is set but this is not a torchrun process ({shown}): start several processes with "
            "torchrun, or unset WORLD_SIZE for one"
        ) from None
    missing = [k for k in RENDEZVOUS if not os.environ.get(k)]
    if size > 1 and missing:  # env:// rendezvous needs them; torchrun sets them
        raise ConfigError(
            f"WORLD_SIZE={size} is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: start "
            "several processes with torchrun, which sets them, or unset WORLD_SIZE for one"
        )
    return World(rank, size, local)


def join() -> None:
    """Join the process group (once per process), before anything of the command can fail in one
    process alone, so that every failure of the start is agreed (`all_or_none`): gloo on a machine
    without CUDA; with CUDA, gloo for the CPU tensors (the agreements) and NCCL for the CUDA ones."""
    if not current().distributed or dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except Exception as e:  # the rendezvous: a peer that never came, an address that does not answer
        raise ConfigError(f"could not join the other processes of this torchrun run ({one_line(e)})") from None


def init(device: torch.device) -> None:
    """The process group, joined (`join`), with this process's GPU current for NCCL's objects
    (broadcast_object_list's buffers live on the current device)."""
    if not current().distributed:
        return
    join()
    if device.type == "cuda":
        torch.cuda.set_device(device)


def close() -> None:
    """Leave the process group together, after the last run of the command ended the same way in
    every process (finished, or stopped by an agreed signal). A group torn down by interpreter exit
    alone, while a peer is still at its last steps, can end its process with std::terminate. After
    a lost peer there is no one to leave with: the process ends without a second message."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # DDP's reducer holds the group: let it go first
    if GroupState.broken:  # a peer is gone and this process has said so: nobody to wait for
        return
    with collective():
        dist.barrier()
    dist.destroy_process_group()


def device_for(name: str) -> str:
    """Under torchrun with CUDA, each process takes the GPU of its LOCAL_RANK."""
    world = current()
    if world.distributed and name == "mps":
        raise ConfigError(
            f"device=mps under torchrun: a Mac has one GPU, and {world.size} processes cannot share it: run one process"
        )
    if not world.distributed or not name.startswith(("cuda", "auto")):
        return name
    if name == "auto" and not torch.cuda.is_available():
        return "cpu"
    if name not in ("auto", "cuda"):
        raise ConfigError(
            f"device={name} names one GPU, but under torchrun each of the {world.size} processes takes the GPU "
            "of its LOCAL_RANK: use device=cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    return f"cuda:{world.local_rank}"


def reduce_values(values: list[float], device: torch.device, op: Any) -> list[float]:
    """Each value reduced over the processes with `op` (in float64); the values themselves in one."""
    if not current().distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    with collective():
        dist.all_reduce(t, op=op)
    return t.tolist()


def sum_(values: list[float], device: torch.device) -> list[float]:
    return reduce_values(values, device, dist.ReduceOp.SUM)


def max_(values: list[float], device: torch.device) -> list[float]:
    return reduce_values(values, device, dist.ReduceOp.MAX)


def any_(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on one (a stop signal, a failure)."""
    if not current().distributed:
        return flag
    return sum_([float(flag)], device)[0] > 0


def barrier(device: torch.device) -> None:
    """Wait until every process is here (e.g. for rank 0's last writes)."""
    if current().distributed:
        with collective():
            dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


LINE = 480  # bytes of each process's failure line that an agreement carries


def all_or_none(action: Callable[[], T]) -> T:
    """Run `action` in every process (each process's share of the start, rank 0's writes); if it
    fails in any, fail in all, so that no process waits in a collective for one that has left.
    Every process's failure line reaches rank 0, which prints them all, each failed process's in
    its own words after its rank ("rank 1: data file ... does not exist"): on rank 0 the failure is
    OwnFailure when rank 0's own action failed (its cause kept), else PeerFailed; on the other
    ranks a quiet PeerFailed (their words are rank 0's to print). In one process, `action` itself."""
    if not current().distributed:
        return action()
    failure: Exception | None = None
    try:
        result = action()
    except Exception as e:  # a missing file on one node, a full disk under rank 0, memory, ...
        failure, result = e, None
    lines = exchange(None if failure is None else one_line(failure))
    if not any(lines):
        return result  # type: ignore[return-value]
    world = current()
    if not world.main:
        raise PeerFailed("a process of this torchrun run failed (rank 0 says why)") from failure
    said = [lines[0]] if lines[0] else []
    said += [f"rank {r}: {line}" for r, line in enumerate(lines) if r and line and line != lines[0]]
    if failure is not None:
        raise OwnFailure("; ".join(said)) from failure
    raise PeerFailed("; ".join(said))


def exchange(line: str | None) -> list[str]:
    """Every process's failure line ("" for none), on every process: each writes its own row of
    one byte tensor and a sum gives all of them to all (no pickling, on gloo's CPU tensors)."""
    world = current()
    rows = torch.zeros(world.size, LINE, dtype=torch.uint8)
    if line:
        data = line.encode()[:LINE]
        rows[world.rank, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    rows = rows.to(torch.int32)  # summed as integers: one row each, no overflow
    with collective():
        dist.all_reduce(rows)
    return [bytes(row.to(torch.uint8).tolist()).rstrip(b"\0").decode(errors="replace") for row in rows]


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj`, on every process."""
    if not current().distributed:
        return obj
    box = [obj]
    with collective():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def printed_line(e: BaseException, line: str) -> str | None:
    """The line this process prints for `e`: every error in one process; under torchrun rank 0
    speaks for all (agreed failures carry the other ranks' words to it), and another rank only
    about a failure of its own that was not agreed (prefixed with its rank)."""
    world = current()
    if world.main:
        return line
    return f"rank {world.rank}: {line}" if isinstance(e, OwnFailure) else None
