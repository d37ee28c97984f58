"""How many images/s the ImageNet input pipeline delivers per DataLoader worker, and so how many
workers keep a GPU fed.

Runs resexp's own training pipeline (resexp.data.imagenet: JPEG decode, shorter side sampled in
[256, 480], 224 crop, flip, PCA lighting, normalisation; torchvision.transforms.v2) over a folder of
JPEGs through a DataLoader with 0, 1, 2, ... workers, and prints images/s in all and per worker.
Without --root it first writes --images JPEGs of ImageNet's typical size (500x375, quality 90) to
a temporary folder. Divide the GPU's training speed (images/s, from `resexp bench` or a run's
log) by the per-worker figure for the number of workers one GPU needs.

    python benchmarks/input_pipeline.py --workers 0 1 2
    python benchmarks/input_pipeline.py --root /data/imagenet --workers 4 8 16 --images 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from resexp.data.imagenet import transforms
from resexp.launch.jobs import compose


def write_jpegs(root: Path, count: int, size: tuple[int, int] = (500, 375)) -> Path:
    """`count` JPEGs in two class folders under root/train (smooth colour fields plus noise, so
    that they compress like photographs rather than like noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    for i in range(count):
        folder = root / "train" / f"n{i % 2:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-12, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i}.JPEG", quality=90)
    return root


def measure(root: Path, workers: int, images: int, batch_size: int) -> float:
    """Images/s of the training pipeline over the first `images` files, after one warm-up batch."""
    from torchvision.datasets import ImageFolder

    cfg = compose(["model=imagenet", "data=imagenet", f"data.root={root}", "device=cpu"]).data
    dataset = ImageFolder(str(root / "train"), transform=transforms(cfg, train=True))
    dataset = Subset(dataset, range(min(images, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True)
    batches = iter(loader)
    next(batches)  # workers started, first files read
    count, start = 0, time.perf_counter()
    for x, _ in batches:
        count += len(x)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="an ImageFolder tree with train/<class>/*.JPEG (default: generated)")
    parser.add_argument("--images", type=int, default=512, help="images per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker: one thread each
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or write_jpegs(Path(tmp), args.images + args.batch_size)
        results = []
        for workers in args.workers:
            rate = measure(root, workers, args.images + args.batch_size, args.batch_size)
            per_worker = rate / max(workers, 1)
            results.append({"workers": workers, "images_per_s": rate, "per_worker": per_worker})
            where = "in the main process" if workers == 0 else f"{workers} worker(s)"
            print(f"{where:>22}: {rate:8.1f} images/s  ({per_worker:.1f} per worker)", flush=True)
    return results


if __name__ == "__main__":
    main()
