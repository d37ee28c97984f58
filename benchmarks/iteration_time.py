"""Wall time of one training iteration (forward, backward, SGD step, batch 128 by default) of the
CIFAR nets on this machine, through resexp's own data path and train_step, after warm-up.

    python benchmarks/iteration_time.py                  # ResNet/plain 20 and 56, CPU or GPU
    python benchmarks/iteration_time.py --depths 20 110 --batch 64 --iterations 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from resexp.config import DataConfig, DataName
from resexp.data import build_data
from resexp.models import build_net
from resexp.train import Running, make_optimizer, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    parser.add_argument("--modes", nargs="+", default=["residual", "plain"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    n = args.batch * (args.iterations + args.warmup)
    data = build_data(DataConfig(name=DataName.synthetic, train_size=n, test_size=16, batch_size=args.batch), 0, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch}; {args.iterations} timed iterations")
    for depth in args.depths:
        for mode in args.modes:
            torch.manual_seed(0)
            model = build_net("cifar", depth, mode, "A", 10).to(device)
            optimizer = make_optimizer(model, 0.1, 0.9, 1e-4)
            running = Running(device)
            times, last = [], time.perf_counter()
            for i, (x, y) in enumerate(data.train.batches(0)):  # the batch's augmentation is timed too
                train_step(model, optimizer, x, y, running)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                if i >= args.warmup:
                    times.append(now - last)
                last = now
            t = np.array(times)
            print(f"{mode}-{depth}: {t.mean():.3f} s/iteration (median {np.median(t):.3f}, "
                  f"{args.batch / t.mean():.0f} images/s); 64k iterations: {64000 * t.mean() / 3600:.1f} h")


if __name__ == "__main__":
    main()
