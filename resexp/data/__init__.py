"""Datasets and batches: CIFAR-10/100 and the synthetic set as one uint8 tensor on the device
(resexp.data.cifar), ImageNet as an ImageFolder tree through DataLoader workers
(resexp.data.imagenet). The loop sees only `Data` (resexp.data.common)."""

from __future__ import annotations

import torch

from resexp.config import DataConfig, DataName
from resexp.data.common import Batch, Data, DataSource, EvalStream, TrainStream, endless
from resexp.distributed import ONE, World
from resexp.errors import DataError

__all__ = [
    "Batch",
    "Data",
    "DataError",
    "DataSource",
    "EvalStream",
    "TrainStream",
    "build_data",
    "endless",
    "inspect",
    "source",
]


def source(cfg: DataConfig) -> DataSource:
    """Which data the config reads, with a cheap fingerprint, before anything is loaded."""
    if cfg.name == DataName.imagenet:
        from resexp.data import imagenet

        return imagenet.source(cfg)
    from resexp.data import cifar

    return cifar.source(cfg)


def inspect(cfg: DataConfig) -> DataSource:
    """`source`, and the checks of the data that need no pixels read (arrays, shapes, labels), so
    that every job of a sweep is checked before the first one trains."""
    found = source(cfg)
    if cfg.name in (DataName.cifar10, DataName.cifar100):
        from resexp.data import cifar

        path = cifar.npz_path(cfg)
        if path is not None:
            cifar.inspect_npz(path, cifar.CLASSES[cfg.name])
    return found


def build_data(cfg: DataConfig, seed: int, device: torch.device, world: World = ONE) -> Data:
    """The one function that turns the data config into batches (this process's share of them
    under torchrun)."""
    if cfg.name == DataName.imagenet:
        from resexp.data.imagenet import imagenet_data

        return imagenet_data(cfg, seed, device, world)
    from resexp.data.cifar import tensor_data

    return tensor_data(cfg, seed, device, world)
