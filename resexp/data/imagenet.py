"""ImageNet from an ImageFolder tree (root/train/<class>/*, root/val/<class>/*), He et al. 2015
Sec. 3.4: "The image is resized with its shorter side randomly sampled in [256, 480] for scale
augmentation. A 224x224 crop is randomly sampled from an image or its horizontal flip".
Evaluation resizes the shorter side to 256 and takes the centre crop, or 10 crops (the four
corners and the centre, and their flips) whose softmax outputs are averaged (Table 2).
Transforms are torchvision.transforms.v2, run in DataLoader workers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from resexp.config import DataConfig
from resexp.data.common import Batch, Data, DataSource, epoch_generator
from resexp.errors import DataError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def transforms(cfg: DataConfig, train: bool):
    from torchvision.transforms import v2

    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    if train and cfg.augment:
        return v2.Compose(
            [
                v2.RandomShortestSize(list(range(cfg.scale_min, cfg.scale_max + 1))),
                v2.RandomCrop(cfg.crop_size),
                v2.RandomHorizontalFlip(),
                *to_tensor,
            ]
        )
    resize = v2.Resize(cfg.scale_min)
    if train or not cfg.ten_crop:
        return v2.Compose([resize, v2.CenterCrop(cfg.crop_size), *to_tensor])
    return v2.Compose([resize, v2.TenCrop(cfg.crop_size), StackCrops(v2.Compose(to_tensor))])


class StackCrops:
    """10 crops -> one tensor (10, 3, H, W); a class, not a lambda, so workers can pickle it."""

    def __init__(self, to_tensor) -> None:
        self.to_tensor = to_tensor

    def __call__(self, crops) -> torch.Tensor:
        return torch.stack([self.to_tensor(c) for c in crops])


def source(cfg: DataConfig) -> DataSource:
    """The class folders and how many files each holds, hashed: a cheap fingerprint of the tree."""
    root = Path(cfg.root).expanduser()
    h = hashlib.sha1()
    for part in ("train", "val"):
        folder = root / part
        try:
            classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        except OSError:
            classes = []
        if not classes:
            raise DataError(
                f"ImageNet not found: expected class folders under {folder}/ (ImageFolder layout: "
                f"{root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG); it cannot be downloaded "
                "automatically, get it from image-net.org and set data.root"
            )
        for name in classes:
            h.update(f"{part}/{name}:{sum(1 for _ in os.scandir(folder / name))}\n".encode())
    return DataSource(cfg.name, f"{root.name}/", h.hexdigest()[:16])


class FolderTrainStream:
    """Shuffled batches of one epoch from a folder dataset, through DataLoader workers."""

    def __init__(self, dataset: Dataset, cfg: DataConfig, seed: int, device: torch.device) -> None:
        self.dataset, self.cfg, self.seed, self.device = dataset, cfg, seed, device

    def __len__(self) -> int:
        return len(self.dataset) // self.cfg.batch_size

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.dataset), generator=g)[start * self.cfg.batch_size :].tolist()
        loader = DataLoader(
            Subset(self.dataset, order),
            batch_size=self.cfg.batch_size,
            drop_last=True,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            generator=g,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class FolderEvalSet:
    def __init__(self, dataset: Dataset, cfg: DataConfig, device: torch.device) -> None:
        self.dataset, self.cfg, self.device = dataset, cfg, device

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:
        loader = DataLoader(
            self.dataset,
            batch_size=self.cfg.eval_batch_size,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def imagenet_data(cfg: DataConfig, seed: int, device: torch.device) -> Data:
    from torchvision.datasets import ImageFolder

    source(cfg)  # the tree is there, else a DataError saying what is expected
    root = Path(cfg.root).expanduser()
    try:
        train = ImageFolder(str(root / "train"), transform=transforms(cfg, train=True))
        val = ImageFolder(str(root / "val"), transform=transforms(cfg, train=False))
    except (OSError, ValueError) as e:  # a class folder without images
        raise DataError(f"{root}: {e}") from None
    if train.classes != val.classes:
        raise DataError(f"{root}/train and {root}/val have different class folders")
    if cfg.subset is not None:
        train = Subset(train, range(min(cfg.subset, len(train))))
    if cfg.batch_size > len(train):
        raise DataError(f"data.batch_size={cfg.batch_size} is larger than the {len(train)} training images")
    evals = {"test": FolderEvalSet(val, cfg, device)}
    return Data(FolderTrainStream(train, cfg, seed, device), evals, len(val.classes), len(train))
