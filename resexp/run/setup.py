"""A run's optimizer, and the memory check that refuses a net too large for the device before any
module is built (the net itself: resexp.nets.build; the device and seeds: resexp.device)."""

from __future__ import annotations

import torch
from torch import nn

from resexp.config import Config, DataName
from resexp.device import device_memory
from resexp.errors import ConfigError
from resexp.nets.costs import training_memory
from resexp.run.speed import EAGER, Speed


def make_optimizer(
    model: nn.Module, lr: float, momentum: float, weight_decay: float, speed: Speed = EAGER
) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, **speed.optimizer_options()
    )


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
    params, needed = training_memory(m.family, m.depth, batch_size, size, classes, d.eval_batch_size * crops, m.body)
    if d.name == DataName.synthetic:
        needed += (d.train_size + d.test_size) * size * size * 3
    fits(needed, device, f"model.depth={m.depth} at a batch of {batch_size} on {size}x{size} images", params)


def fits(needed: int, device: torch.device, what: str, params: int | None = None, advice: str = "") -> None:
    """Refuse `needed` bytes where the device has fewer, naming what asked for them."""
    available = device_memory(device)
    if needed > available:
        count = f" ({params / 1e6:,.2f}M parameters)" if params is not None else ""
        raise ConfigError(
            f"{what} needs about {needed / 2**30:,.1f} GiB{count}, more than the {available / 2**30:,.1f} GiB of "
            f"{device}: {advice or 'use a smaller depth or batch size'}"
        )
