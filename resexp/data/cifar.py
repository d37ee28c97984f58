"""CIFAR-10/100 and the synthetic set as one uint8 tensor on the device.

He et al. 2015, Sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly
sampled from the padded image or its horizontal flip", with the per-pixel mean subtracted. Here
the crop offsets and flips of a whole epoch are drawn up front from a generator seeded by
(seed, epoch) and applied to each batch with one gather on the device. So no worker processes
are needed, the same crops come out on CPU and GPU, and a run resumed in the middle of an epoch
sees exactly the batches it would have seen.

Sources: an .npz with uint8 x_train, y_train, x_test, y_test (or JPEG bytes + offsets, decoded on
load), torchvision's folder layout (downloaded on request), or a generated synthetic set.
"""

from __future__ import annotations

import copy
import io
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resexp.config import DataConfig, DataName
from resexp.data.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Batch,
    Data,
    DataSource,
    epoch_generator,
    file_fingerprint,
    shard,
)
from resexp.distributed import ONE, World
from resexp.errors import DataError

CLASSES = {DataName.cifar10: 10, DataName.cifar100: 100}
IMAGE_SIZE = 32
TORCHVISION_FOLDERS = {DataName.cifar10: "cifar-10-batches-py", DataName.cifar100: "cifar-100-python"}
TORCHVISION_FILES = {
    DataName.cifar10: [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
    DataName.cifar100: ["train", "test"],
}
SYNTHETIC_SEED = 20151210  # the data never depend on the run's seed


@dataclass
class Arrays:
    """A dataset in memory: uint8 images (N, H, W, 3) and integer labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


# --------------------------------------------------------------------------- where the data is


def npz_path(cfg: DataConfig) -> Path | None:
    """The .npz file the config points at, if any: root itself, root/file, or root/<name>.npz."""
    root = Path(cfg.root).expanduser()
    if root.suffix == ".npz":
        return root
    if cfg.file is not None:
        return root / cfg.file
    candidate = root / f"{cfg.name}.npz"
    return candidate if candidate.exists() else None


def torchvision_dataset(cfg: DataConfig, train: bool):
    import torchvision

    dataset = {DataName.cifar10: torchvision.datasets.CIFAR10, DataName.cifar100: torchvision.datasets.CIFAR100}
    root = Path(cfg.root).expanduser()
    try:
        return dataset[cfg.name](str(root), train=train, download=cfg.download)
    except Exception as e:  # network errors, corrupt pickles, failed checksums
        raise DataError(f"could not load {cfg.name} from {root}/ with torchvision ({type(e).__name__}: {e})") from None


def source(cfg: DataConfig) -> DataSource:
    """Which data the config reads (downloading it first when asked), before loading it."""
    if cfg.name == DataName.synthetic:
        return DataSource(cfg.name, "generated", f"synthetic-{SYNTHETIC_SEED}")
    path = npz_path(cfg)
    if path is not None:
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        return DataSource(cfg.name, path.name, file_fingerprint([path]))
    root = Path(cfg.root).expanduser()
    folder = root / TORCHVISION_FOLDERS[cfg.name]
    if cfg.download:
        existed = root.exists()
        try:
            torchvision_dataset(cfg, train=True), torchvision_dataset(cfg, train=False)
        except DataError:
            if not existed:  # the folder and the partial download are this command's: leave no trace
                shutil.rmtree(root, ignore_errors=True)
            raise
    if not folder.is_dir():
        raise DataError(
            f"{cfg.name} not found in {root}/: expected {root / (cfg.name + '.npz')} (uint8 x_train, y_train, x_test, "
            f"y_test) or torchvision's {folder}/. Add data.download=true to download it there (needs internet), "
            "or point data.root at a copy"
        )
    return DataSource(cfg.name, f"{folder.name}/", file_fingerprint(folder / f for f in TORCHVISION_FILES[cfg.name]))


# --------------------------------------------------------------------------- loading arrays


def decode_jpegs(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Concatenated JPEG files (uint8) + offsets (N+1) -> uint8 images (N, H, W, 3)."""
    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB"))
            for i in range(len(offsets) - 1)
        ]
    )


def load_npz(path: Path, num_classes: int) -> Arrays:
    """x_train/y_train/x_test/y_test as uint8 arrays, or train_/test_ jpeg_bytes + offsets."""
    try:
        with np.load(path) as z:
            keys = set(z.files)
            if {"x_train", "y_train", "x_test", "y_test"} <= keys:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            elif {
                "train_jpeg_bytes",
                "train_jpeg_offsets",
                "y_train",
                "test_jpeg_bytes",
                "test_jpeg_offsets",
                "y_test",
            } <= keys:
                arrays = {
                    "x_train": decode_jpegs(z["train_jpeg_bytes"], z["train_jpeg_offsets"]),
                    "y_train": z["y_train"],
                    "x_test": decode_jpegs(z["test_jpeg_bytes"], z["test_jpeg_offsets"]),
                    "y_test": z["y_test"],
                }
            else:
                raise DataError(
                    f"{path} holds arrays {sorted(keys)}; expected x_train, y_train, x_test, y_test "
                    "(uint8 images N x 32 x 32 x 3 and their labels)"
                )
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated, pickled objects, not an npz
        raise DataError(
            f"{path} could not be read as an .npz file of arrays ({type(e).__name__}); is it truncated?"
        ) from None
    return check_arrays(Arrays(num_classes=num_classes, **arrays), str(path))


def inspect_npz(path: Path, num_classes: int) -> None:
    """Check an .npz as `load_npz` will, without reading its images: their shapes and dtypes from
    the arrays' headers (or the first JPEG), the labels in full (they are small). For the check of
    every job of a sweep before the first one trains."""

    def header(z: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
        with z.zip.open(f"{key}.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        return shape, dtype

    try:
        with np.load(path) as z:
            keys = set(z.files)
            x: dict[str, np.ndarray] = {}
            if {"x_train", "y_train", "x_test", "y_test"} <= keys:
                for split in ("train", "test"):
                    shape, dtype = header(z, f"x_{split}")
                    x[split] = np.broadcast_to(np.zeros((), dtype), shape)  # a stand-in: no memory
            elif {"train_jpeg_bytes", "train_jpeg_offsets", "y_train", "test_jpeg_bytes", "test_jpeg_offsets"} <= keys:
                for split in ("train", "test"):
                    data, offsets = z[f"{split}_jpeg_bytes"], z[f"{split}_jpeg_offsets"]
                    first = decode_jpegs(data, offsets[:2]) if len(offsets) > 1 else np.zeros((0, 32, 32, 3), np.uint8)
                    x[split] = np.broadcast_to(np.zeros((), np.uint8), (len(offsets) - 1, *first.shape[1:]))
            else:
                load_npz(path, num_classes)  # says what is missing
                return
            ys = {split: z[f"y_{split}"] for split in ("train", "test")}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(
            f"{path} could not be read as an .npz file of arrays ({type(e).__name__}); is it truncated?"
        ) from None
    check_arrays(Arrays(x["train"], ys["train"], x["test"], ys["test"], num_classes), str(path))


def check_arrays(a: Arrays, source: str, image_size: int = IMAGE_SIZE) -> Arrays:
    """Everything the loop will rely on: uint8 RGB images of the family's size, one integer
    label per image in 0..K-1, and labels that use the last class (a CIFAR-10 file given as
    data=cifar100 has K = 10, not 100)."""
    for split in ("train", "test"):
        x, y = getattr(a, f"x_{split}"), getattr(a, f"y_{split}")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
            raise DataError(f"{source}: x_{split} has dtype {x.dtype} and shape {x.shape}; expected uint8 (N, H, W, 3)")
        if len(x) == 0:
            raise DataError(f"{source}: x_{split} holds no images")
        if x.shape[1:3] != (image_size, image_size):
            raise DataError(
                f"{source}: x_{split} holds {x.shape[1]}x{x.shape[2]} images; expected {image_size}x{image_size}"
            )
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{source}: y_{split} has shape {y.shape}; expected ({len(x)},), one label per image")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: y_{split} has dtype {y.dtype}; expected integer labels 0..{a.num_classes - 1}")
        if y.min() < 0 or y.max() >= a.num_classes:
            raise DataError(
                f"{source}: y_{split} has labels in [{y.min()}, {y.max()}]; expected 0..{a.num_classes - 1}"
            )
    top = max(a.y_train.max(), a.y_test.max())
    if top != a.num_classes - 1:
        raise DataError(
            f"{source}: labels run from 0 to {top}, so it holds {top + 1} classes, not the "
            f"{a.num_classes} of this dataset: is data= the right one?"
        )
    a.y_train, a.y_test = a.y_train.astype(np.int64), a.y_test.astype(np.int64)
    return a


def synthetic_arrays(cfg: DataConfig) -> Arrays:
    """Class prototypes (smooth random colour fields) plus per-image noise and a random shift:
    learnable by a small net in a few dozen iterations, identical on every machine."""
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    k, s = cfg.num_classes, cfg.image_size
    prototypes = F.interpolate(torch.rand(k, 3, 4, 4, generator=g), size=(s, s), mode="bilinear", align_corners=False)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = torch.randint(0, k, (n,), generator=g)
        noise = torch.rand(n, 3, s, s, generator=g)
        x = 0.65 * prototypes[y] + 0.35 * noise
        shift = int(torch.randint(-2, 3, (1,), generator=g))
        x = torch.roll(x, shifts=shift, dims=3)
        return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(), y.numpy()

    x_train, y_train = sample(cfg.train_size)
    x_test, y_test = sample(cfg.test_size)
    return Arrays(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), k)


def load_arrays(cfg: DataConfig) -> Arrays:
    if cfg.name == DataName.synthetic:
        return synthetic_arrays(cfg)
    path = npz_path(cfg)
    if path is not None:
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        return load_npz(path, CLASSES[cfg.name])
    source(cfg)  # the folder is there (or downloaded), else a DataError saying how to get it
    train, test = torchvision_dataset(cfg, train=True), torchvision_dataset(cfg, train=False)
    arrays = Arrays(train.data, np.asarray(train.targets), test.data, np.asarray(test.targets), CLASSES[cfg.name])
    return check_arrays(arrays, str(Path(cfg.root).expanduser() / TORCHVISION_FOLDERS[cfg.name]))


def split(a: Arrays, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Training images after the validation hold-out and the subset; the evaluation sets."""
    x, y = a.x_train, a.y_train
    evals = {"test": (a.x_test, a.y_test)}
    if cfg.val_split:
        if cfg.val_split >= len(x):
            raise DataError(f"data.val_split={cfg.val_split} leaves no training images (the set has {len(x)})")
        x, y, evals["val"] = x[: -cfg.val_split], y[: -cfg.val_split], (x[-cfg.val_split :], y[-cfg.val_split :])
    if cfg.subset is not None:
        if cfg.subset > len(x):
            raise DataError(f"data.subset={cfg.subset} is larger than the {len(x)} training images available")
        x, y = x[: cfg.subset], y[: cfg.subset]
    if cfg.batch_size > len(x):
        raise DataError(f"data.batch_size={cfg.batch_size} is larger than the {len(x)} training images")
    return x, y, evals


# --------------------------------------------------------------------------- tensor batches


class Normalizer:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W): subtract the per-pixel mean image (the paper's)
    or the per-channel mean and divide by the per-channel std, both taken from the training set;
    or ImageNet's fixed per-channel mean and std (`imagenet`: what nets trained that way expect)."""

    def __init__(self, x_train: np.ndarray, kind: str, device: torch.device) -> None:
        x = torch.from_numpy(x_train).to(torch.float64) / 255  # (N, H, W, 3)
        if kind == "imagenet":
            self.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
            self.std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
        elif kind == "pixel_mean":
            self.mean = x.mean(0).permute(2, 0, 1)
            self.std = torch.ones(3, 1, 1, dtype=torch.float64)
        else:
            self.mean = x.mean((0, 1, 2)).view(3, 1, 1)
            self.std = x.std((0, 1, 2)).clamp_min(1 / 255).view(3, 1, 1)
        self.mean = self.mean.to(device, torch.float32)
        self.scale = (1 / (255 * self.std)).to(device, torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.permute(0, 3, 1, 2).float() - self.mean * 255) * self.scale


def crop_flip(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-image random crop of a zero-padded batch, mirrored where `flip`, as one gather.
    x: uint8 (B, H, W, C); dx, dy: offsets in [0, 2*pad]; flip: bool (B,)."""
    b, h, w, _ = x.shape
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (B, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


class TensorTrainStream:
    """Shuffled, augmented batches from a uint8 tensor held on the device."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        normalize: Normalizer,
        augment: bool,
        seed: int,
        device: torch.device,
        pad: int = 4,
        world: World = ONE,
    ) -> None:
        self.x = torch.from_numpy(x).to(device)
        self.y = torch.from_numpy(y).to(device)
        self.batch_size, self.normalize, self.augment = batch_size, normalize, augment
        self.seed, self.pad, self.device = seed, pad, device
        self.share, self.rank = world.share(batch_size), world.rank

    def __len__(self) -> int:
        return len(self.x) // self.batch_size  # the last partial batch is dropped: fixed shapes

    def with_seed(self, seed: int):
        """The same images (shared, not copied) in the order and with the augmentation of `seed`."""
        stream = copy.copy(self)
        stream.seed = seed
        return stream

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Global batch i is positions [i*B, (i+1)*B) of the epoch's order, whatever the number of
        processes; each process takes its consecutive share of it, crops and flips included."""
        n, g = len(self.x), epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g).to(self.device)
        dx, dy = torch.randint(0, 2 * self.pad + 1, (2, n), generator=g).to(self.device)
        flip = (torch.rand(n, generator=g) < 0.5).to(self.device)
        for i in range(start, len(self)):
            first = i * self.batch_size + self.rank * self.share
            idx = slice(first, first + self.share)
            x = self.x[order[idx]]
            if self.augment:
                x = crop_flip(x, dx[idx], dy[idx], flip[idx], self.pad)
            yield self.normalize(x), self.y[order[idx]]


class EvalSet:
    """A fixed evaluation set, in large unaugmented batches."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        normalize: Normalizer,
        device: torch.device,
        world: World = ONE,
    ) -> None:
        part = shard(len(y), world)  # under torchrun each process evaluates its own slice
        self.x = torch.from_numpy(x[part]).to(device)
        self.y = torch.from_numpy(y[part]).to(device)
        self.batch_size, self.normalize = batch_size, normalize

    def __len__(self) -> int:
        return len(self.y)

    def __iter__(self) -> Iterator[Batch]:
        for i in range(0, len(self.y), self.batch_size):
            yield self.normalize(self.x[i : i + self.batch_size]), self.y[i : i + self.batch_size]


def tensor_data(cfg: DataConfig, seed: int, device: torch.device, world: World = ONE) -> Data:
    arrays = load_arrays(cfg)
    x, y, evals = split(arrays, cfg)
    normalize = Normalizer(x, cfg.normalize, device)
    train = TensorTrainStream(x, y, cfg.batch_size, normalize, cfg.augment, seed, device, world=world)
    eval_sets = {k: EvalSet(ex, ey, cfg.eval_batch_size, normalize, device, world) for k, (ex, ey) in evals.items()}
    return Data(train, eval_sets, arrays.num_classes, len(x))
