"""ImageNet from an ImageFolder tree (root/train/<class>/*, root/val/<class>/*), He et al. 2015
Sec. 3.4: "The image is resized with its shorter side randomly sampled in [256, 480] for scale
augmentation. A 224x224 crop is randomly sampled from an image or its horizontal flip".
Evaluation resizes the shorter side to 256 and takes the centre crop, or 10 crops (the four
corners and the centre, and their flips) whose softmax outputs are averaged (Table 2).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from resexp.config import DataConfig
from resexp.data import IMAGENET_MEAN, IMAGENET_STD, Batch, Data, DataError, epoch_generator


class RandomShorterSide:
    """Resize so that the shorter side is a random integer in [low, high] (scale augmentation)."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def __call__(self, image):  # PIL image -> PIL image
        from torchvision.transforms import functional as TF

        return TF.resize(image, random.randint(self.low, self.high))


def transforms(cfg: DataConfig, train: bool):
    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and cfg.augment:
        return T.Compose([RandomShorterSide(cfg.scale_min, cfg.scale_max), T.RandomCrop(cfg.crop_size),
                          T.RandomHorizontalFlip(), *normalize])  # fmt: skip
    resize = T.Resize(cfg.scale_min)
    if train or not cfg.ten_crop:
        return T.Compose([resize, T.CenterCrop(cfg.crop_size), *normalize])
    return T.Compose([resize, T.TenCrop(cfg.crop_size), StackCrops(T.Compose(normalize))])


class StackCrops:
    """10 PIL crops -> one tensor (10, 3, H, W); a class, not a lambda, so workers can pickle it."""

    def __init__(self, to_tensor) -> None:
        self.to_tensor = to_tensor

    def __call__(self, crops) -> torch.Tensor:
        return torch.stack([self.to_tensor(c) for c in crops])


class FolderTrainStream:
    """Shuffled batches of one epoch from a folder dataset, through DataLoader workers."""

    def __init__(self, dataset: Dataset, cfg: DataConfig, seed: int, device: torch.device) -> None:
        self.dataset, self.cfg, self.seed, self.device = dataset, cfg, seed, device

    def __len__(self) -> int:
        return len(self.dataset) // self.cfg.batch_size

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.dataset), generator=g)[start * self.cfg.batch_size :].tolist()
        loader = DataLoader(Subset(self.dataset, order), batch_size=self.cfg.batch_size, drop_last=True,
                            num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda", generator=g,
                            persistent_workers=False)  # fmt: skip
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class FolderEvalSet:
    def __init__(self, dataset: Dataset, cfg: DataConfig, device: torch.device) -> None:
        self.dataset, self.cfg, self.device = dataset, cfg, device

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:
        loader = DataLoader(self.dataset, batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.workers,
                            pin_memory=self.device.type == "cuda")  # fmt: skip
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def imagenet_data(cfg: DataConfig, seed: int, device: torch.device) -> Data:
    from torchvision.datasets import ImageFolder

    root = Path(cfg.root).expanduser()
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise DataError(
                f"ImageNet not found: expected class folders under {root / part}/ (ImageFolder layout: "
                f"{root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG); it cannot be downloaded "
                "automatically, get it from image-net.org and set data.root"
            )
    train = ImageFolder(str(root / "train"), transform=transforms(cfg, train=True))
    val = ImageFolder(str(root / "val"), transform=transforms(cfg, train=False))
    if train.classes != val.classes:
        raise DataError(f"{root}/train and {root}/val have different class folders")
    if cfg.subset is not None:
        train = Subset(train, range(min(cfg.subset, len(train))))
    if cfg.batch_size > len(train):
        raise DataError(f"data.batch_size={cfg.batch_size} is larger than the {len(train)} training images")
    return Data(FolderTrainStream(train, cfg, seed, device), {"test": FolderEvalSet(val, cfg, device)},
                len(val.classes), len(train))  # fmt: skip
