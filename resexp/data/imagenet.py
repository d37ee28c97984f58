"""ImageNet from an ImageFolder tree (root/train/<class>/*, root/val/<class>/*), He et al. 2015
Sec. 3.4: "The image is resized with its shorter side randomly sampled in [256, 480] for scale
augmentation. A 224x224 crop is randomly sampled from an image or its horizontal flip".
Colour: AlexNet's PCA lighting noise (data.lighting, the std of its coefficients). Evaluation
resizes the shorter side to 256 and takes the centre crop, or 10 crops (the four corners and the
centre, and their flips) whose softmax outputs are averaged (Table 2), or the fully-convolutional
multi-scale test: whole images at several shorter sides and their flips (data.test_scales).
Transforms are torchvision.transforms.v2, run in DataLoader workers.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from resexp.config import DataConfig
from resexp.data.common import IMAGENET_MEAN as MEAN
from resexp.data.common import IMAGENET_STD as STD
from resexp.data.common import Batch, Data, DataSource, epoch_generator, shard
from resexp.distributed import ONE, World
from resexp.errors import DataError

# AlexNet's colour augmentation (Krizhevsky et al. 2012, Sec. 4.1), which the paper uses: the
# principal components of ImageNet's RGB pixel values (in [0, 1]), as fb.resnet.torch lists them.
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class Lighting:
    """PCA lighting noise: add sum_i alpha_i * lambda_i * p_i to every pixel of a float image,
    alpha_i ~ N(0, std^2) drawn once per image (std 0.1 in AlexNet)."""

    def __init__(self, std: float) -> None:
        self.std = std
        self.eigval = torch.tensor(EIGVAL)
        self.eigvec = torch.tensor(EIGVEC)  # columns are the eigenvectors

    def noise(self, generator: torch.Generator | None = None) -> torch.Tensor:
        alpha = torch.randn(3, generator=generator) * self.std
        return self.eigvec @ (alpha * self.eigval)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image + self.noise().view(3, 1, 1).to(image.dtype)


def transforms(cfg: DataConfig, train: bool):
    from torchvision.transforms import v2

    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    normalize = v2.Normalize(MEAN, STD)
    if train and cfg.augment:
        lighting = [Lighting(cfg.lighting)] if cfg.lighting > 0 else []
        return v2.Compose(
            [
                v2.RandomShortestSize(list(range(cfg.scale_min, cfg.scale_max + 1))),
                v2.RandomCrop(cfg.crop_size),
                v2.RandomHorizontalFlip(),
                *to_float,
                *lighting,
                normalize,
            ]
        )
    to_tensor = v2.Compose([*to_float, normalize])
    if not train and cfg.test_scales:
        return ScaleViews(cfg.test_scales, to_tensor)
    resize = v2.Resize(cfg.scale_min)
    if train or not cfg.ten_crop:
        return v2.Compose([resize, v2.CenterCrop(cfg.crop_size), to_tensor])
    return v2.Compose([resize, v2.TenCrop(cfg.crop_size), StackCrops(to_tensor)])


class StackCrops:
    """10 crops -> one tensor (10, 3, H, W); a class, not a lambda, so workers can pickle it."""

    def __init__(self, to_tensor) -> None:
        self.to_tensor = to_tensor

    def __call__(self, crops) -> torch.Tensor:
        return torch.stack([self.to_tensor(c) for c in crops])


class ScaleViews:
    """The fully-convolutional multi-scale test (Sec. 3.4, after VGG): the whole image with its
    shorter side resized to each scale, and its mirror image: a list of (2, 3, H_s, W_s) tensors,
    one per scale, whose softmax scores are averaged."""

    def __init__(self, scales: list[int], to_tensor) -> None:
        self.scales, self.to_tensor = list(scales), to_tensor

    def __call__(self, image) -> list[torch.Tensor]:
        from torchvision.transforms import v2

        views = []
        for s in self.scales:
            x = self.to_tensor(v2.functional.resize(image, s))
            views.append(torch.stack([x, x.flip(-1)]))
        return views


def collate_views(batch: list[tuple[list[torch.Tensor], int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Multi-scale views cannot be stacked across images of different shapes: one image a batch."""
    [(views, label)] = batch
    return views, torch.tensor([label])


SAMPLE_BYTES = 1 << 16  # read from the start of each sampled image


def source(cfg: DataConfig) -> DataSource:
    """A cheap fingerprint of the tree: every class folder's file names, and the size and first
    64 KiB of the first and last image of each class (a tree with the same names but other
    images differs there); the class names and counts alone are what resexp 0.2 hashed (legacy)."""
    root = Path(cfg.root).expanduser()
    h, old = hashlib.sha1(), hashlib.sha1()
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
            try:
                files = sorted(e.name for e in os.scandir(folder / name))
                h.update(f"{part}/{name}:{','.join(files)}\n".encode())
                old.update(f"{part}/{name}:{len(files)}\n".encode())
                for sample in {files[0], files[-1]} if files else ():
                    path = folder / name / sample
                    with open(path, "rb") as f:
                        h.update(f"{sample}:{path.stat().st_size}:".encode() + f.read(SAMPLE_BYTES))
            except OSError as e:
                raise DataError(f"{folder / name} cannot be read ({e.strerror})") from None
    return DataSource(cfg.name, f"{root.name}/", h.hexdigest()[:16], legacy=(old.hexdigest()[:16],))


class FolderTrainStream:
    """Shuffled batches of one epoch from a folder dataset, through DataLoader workers. The
    epoch's order does not depend on the number of processes: under torchrun each takes its
    consecutive share of every global batch."""

    def __init__(self, dataset: Dataset, cfg: DataConfig, seed: int, device: torch.device, world: World = ONE) -> None:
        self.dataset, self.cfg, self.seed, self.device, self.world = dataset, cfg, seed, device, world
        self.share = world.share(cfg.batch_size)

    def __len__(self) -> int:
        return len(self.dataset) // self.cfg.batch_size

    def with_seed(self, seed: int):
        """The same images (shared, not copied) in the order and with the augmentation of `seed`."""
        stream = copy.copy(self)
        stream.seed = seed
        return stream

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        b, r = self.cfg.batch_size, self.world.rank
        order = torch.randperm(len(self.dataset), generator=epoch_generator(self.seed, epoch)).tolist()
        mine = [
            i for k in range(start, len(self)) for i in order[k * b + r * self.share : k * b + (r + 1) * self.share]
        ]
        workers = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 4099 + r)  # augmentation seeds
        loader = DataLoader(
            Subset(self.dataset, mine),
            batch_size=self.share,
            drop_last=True,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            generator=workers,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class FolderEvalSet:
    """A folder's evaluation images (this process's slice of them under torchrun)."""

    def __init__(self, dataset: Dataset, cfg: DataConfig, device: torch.device, world: World = ONE) -> None:
        part = shard(len(dataset), world)
        self.dataset = Subset(dataset, range(part.start, part.stop))
        self.cfg, self.device = cfg, device

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:
        views = bool(self.cfg.test_scales)
        loader = DataLoader(
            self.dataset,
            batch_size=1 if views else self.cfg.eval_batch_size,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate_views if views else None,
        )
        for x, y in loader:
            x = [v.to(self.device, non_blocking=True) for v in x] if views else x.to(self.device, non_blocking=True)
            yield x, y.to(self.device, non_blocking=True)


def imagenet_data(cfg: DataConfig, seed: int, device: torch.device, world: World = ONE) -> Data:
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
    evals = {"test": FolderEvalSet(val, cfg, device, world)}
    return Data(FolderTrainStream(train, cfg, seed, device, world), evals, len(val.classes), len(train))
