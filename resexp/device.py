"""Devices: `device=auto|cpu|cuda|cuda:N|mps` as a torch.device (or one line why not), how much
memory one has, and every seed set from one."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from resexp.errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


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
