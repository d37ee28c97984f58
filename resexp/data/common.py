"""What every dataset hands the loop: shuffled training batches of one epoch from any position,
fixed evaluation sets, the class count; and how a dataset is told apart from another one."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from resexp.distributed import World
from resexp.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]
CHUNK = 1 << 20  # bytes hashed at the start, middle and end of each data file
# ImageNet's per-channel mean and std (of pixels in [0, 1]): ImageNet's normalisation, and data.normalize=imagenet's
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TrainStream(Protocol):
    """What the loop needs of training data: batches of one epoch, from batch `start` on."""

    def __len__(self) -> int: ...  # batches per epoch
    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]: ...
    def with_seed(self, seed: int) -> TrainStream: ...  # the same images in the order another seed draws


class EvalStream(Protocol):
    def __len__(self) -> int: ...  # images
    def __iter__(self) -> Iterator[Batch]: ...


@dataclass
class Data:
    train: TrainStream
    evals: dict[str, EvalStream]  # "test", and "val" when data.val_split > 0
    num_classes: int
    train_size: int


@dataclass(frozen=True)
class DataSource:
    """Which data a config reads, known before it is loaded: part of a run's identity. Two
    copies of one file have one fingerprint, wherever they lie."""

    name: str
    source: str  # what the user would recognise: a file name or a folder
    fingerprint: str
    legacy: tuple[str, ...] = ()  # what an older resexp called the same data (runs it made still match)

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source, "fingerprint": self.fingerprint}


def shard(n: int, world: World) -> slice:
    """This process's contiguous slice of n evaluation items: the slices of all processes cover
    every item exactly once (sizes differ by at most one)."""
    return slice(n * world.rank // world.size, n * (world.rank + 1) // world.size)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def endless(stream: TrainStream, step: int) -> Iterator[Batch]:
    """Training batches from iteration `step` on, epoch after epoch."""
    per_epoch = len(stream)
    epoch, start = divmod(step, per_epoch)
    while True:
        yield from stream.batches(epoch, start)
        epoch, start = epoch + 1, 0


def file_fingerprint(paths: Iterable[Path]) -> str:
    """A cheap content hash of data files: their sizes and three 1 MiB slices of each."""
    h = hashlib.sha1()
    for path in paths:
        try:
            size = path.stat().st_size
            h.update(str(size).encode())
            with open(path, "rb") as f:
                for offset in sorted({0, max(0, size // 2 - CHUNK // 2), max(0, size - CHUNK)}):
                    f.seek(offset)
                    h.update(f.read(CHUNK))
        except OSError as e:
            raise DataError(f"data file {path} cannot be read ({e.strerror})") from None
    return h.hexdigest()[:16]
