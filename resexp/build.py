"""Builders: the one place where a config becomes a model, an optimizer, a device, a seed, and the
memory check that refuses a net too large for the device before any module is built. The run's
life (resexp.lifecycle), the analyses, bench and the benchmark scripts all build through here."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import nn

from resexp.config import Config, DataName, ModelConfig
from resexp.costs import training_memory
from resexp.errors import CheckpointError, ConfigError
from resexp.models import build_net, design_change
from resexp.speed import EAGER, Speed

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The only function that turns config into a model."""
    m = cfg.model
    return build_net(m.family, m.depth, m.mode, m.shortcut, num_classes, m.norm, m.init, m.block, m.body)


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], m: ModelConfig, source: str) -> None:
    """Load a checkpoint's tensors into the net its config builds; a mismatch is one line, which
    says so when the design's build changed since the weights were made (models.DESIGN_CHANGES)."""
    try:
        model.load_state_dict(tensors)
    except RuntimeError:
        change = design_change({"init": m.init, "block": m.block})
        if change and set(tensors) != set(model.state_dict()):
            raise CheckpointError(
                f"{source} holds a net of an earlier resexp, whose design changed since ({change}): it cannot be "
                "loaded into the net resexp builds now; train it again (in a new folder, or after deleting this one)"
            ) from None
        raise CheckpointError(f"{source} does not fit the net its config describes") from None


def make_optimizer(
    model: nn.Module, lr: float, momentum: float, weight_decay: float, speed: Speed = EAGER
) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, **speed.optimizer_options()
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, what: str = "device") -> torch.device:
    """The device a name asks for (`what` is how the user gave it: device=..., --device)."""
    if name == "auto":  # a GPU when there is one: CUDA, else a Mac's (MPS), else the CPU
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    shown = f"{what}={name}" if not what.startswith("-") else f"{what} {name}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{shown} is not a device: use {DEVICES}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{shown} is not supported: use {DEVICES}")
    if device.type == "mps" and not mps_available():
        raise ConfigError(f"{shown} asked for, but this machine has no Apple GPU that PyTorch can use (MPS): use cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{shown} asked for, but no CUDA device is available: use cpu or auto")
        if (device.index or 0) >= count:
            raise ConfigError(f"{shown}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def mps_available() -> bool:
    """Whether PyTorch can use this Mac's GPU (Metal Performance Shaders)."""
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


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
