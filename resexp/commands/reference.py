"""The common way to train a CIFAR net, kept as a yardstick for resexp's own path.

Written the way most CIFAR training scripts are (the PyTorch tutorial, kuangliu/pytorch-cifar):
each image goes through torchvision transforms as a PIL image in DataLoader worker processes
(torchvision.transforms.v2: RandomCrop(32, padding=4), RandomHorizontalFlip, ToImage, ToDtype, mean
subtraction), batches are copied
to the device, and the step runs in fp32, eagerly, reading the loss and the number of errors back
with .item() after every iteration. Same nets, same SGD, same schedule and the same per-pixel
mean as `resexp train`; only the data path and the execution differ.

`resexp bench` times it beside the fast path; benchmarks/accuracy.py trains with it to check
that the fast path reaches the same test error. `resexp train` never uses it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class PixelMean:
    """Subtract the training set's mean image (C, H, W, in [0, 1]); a class so workers can pickle it."""

    def __init__(self, mean: torch.Tensor) -> None:
        self.mean = mean

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


class PILImages(Dataset):
    """uint8 (N, H, W, 3) arrays served as PIL images through a torchvision transform."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def transforms(mean: torch.Tensor, augment: bool):
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if augment else []
    return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), PixelMean(mean)])


def loaders(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    batch_size: int,
    workers: int,
    seed: int,
    pin_memory: bool,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled, augmented training batches (the last partial batch dropped, as in resexp) and
    unaugmented test batches."""
    mean = torch.from_numpy(x_train.mean(0, dtype=np.float64) / 255).float().permute(2, 0, 1)
    g = torch.Generator().manual_seed(seed)
    options = {"num_workers": workers, "pin_memory": pin_memory, "persistent_workers": workers > 0}
    train = DataLoader(
        PILImages(x_train, y_train, transforms(mean, True)),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=g,
        **options,
    )
    test = DataLoader(PILImages(x_test, y_test, transforms(mean, False)), batch_size=1000, **options)
    return train, test


def batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches, epoch after epoch."""
    while True:
        yield from loader


def step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[float, int]:
    """One iteration the common way; returns the batch's loss and number of errors."""
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    optimizer.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    return loss.item(), (logits.argmax(1) != y).sum().item()


@torch.no_grad()
def test_error(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    errors, count = 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        errors += (model(x).argmax(1) != y).sum().item()
        count += len(y)
    model.train()
    return 100.0 * errors / count
