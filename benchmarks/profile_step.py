"""Where a training iteration's time goes: torch.profiler over resexp's fast path.

Prints the wall time per iteration, the GPU's busy time per iteration (sum of kernel times) and
so its idle share, the number of kernels per iteration, the kernel time by kind (convolutions,
batch norm, fused elementwise, optimizer, data path, ...), and the top kernels.

    python benchmarks/profile_step.py --depth 56 --mode residual          # device defaults
    python benchmarks/profile_step.py --depth 56 speed.compile=off speed.precision=fp32
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from resexp.commands.bench import fast_step, synthetic_images
from resexp.device import pick_device
from resexp.launch.jobs import compose
from resexp.run.speed import resolve

KINDS = [  # first match wins; kernel names differ between cuDNN, cuBLAS and Triton versions
    ("convolution", r"conv|cudnn|xmma|implicit_gemm|wgrad|dgrad|gemm|cutlass|sm90|sm80"),
    ("batch norm", r"batch_norm|batchnorm|bn_|welford|_bn"),
    ("optimizer", r"sgd|foreach|multi_tensor|fused_sgd"),
    ("data path (index, gather, pad)", r"index|gather|pad|randperm|scatter|copy"),
    ("fused (Triton)", r"triton"),
    ("elementwise / reduce", r"elementwise|vectorized|reduce|unrolled"),
]


def kind(name: str) -> str:
    lowered = name.lower()
    for label, pattern in KINDS:
        if re.search(pattern, lowered):
            return label
    return "other"


def device_events(prof: profile) -> list[tuple[str, float]]:
    """(name, microseconds) of every kernel, copy and memset the GPU ran while profiling."""
    events = prof.profiler.kineto_results.events()
    return [(e.name(), e.duration_ns() / 1000) for e in events if e.device_type() == torch.autograd.DeviceType.CUDA]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--mode", default="residual")
    parser.add_argument("overrides", nargs="*", help="`resexp train` overrides: speed.*, device")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--trace", help="write a Chrome trace here")
    args = parser.parse_args()
    cfg = compose(args.overrides)
    device = pick_device(cfg.device)
    speed = resolve(cfg.speed, device)
    x, y = synthetic_images(20_000)
    step = fast_step(args.depth, args.mode, x, y, 128, speed, device)
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.iterations):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / args.iterations
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.iterations):
            step()
        torch.cuda.synchronize()
    kernels = device_events(prof)
    busy = sum(us for _, us in kernels) / args.iterations / 1000  # ms per iteration
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(list)
    for name, us in kernels:
        by_kind[kind(name)] += us / args.iterations / 1000
        by_name[name].append(us)
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; {args.mode}-{args.depth}, batch 128; "
        f"speed {speed.describe()}"
    )
    print(f"wall time per iteration (unprofiled): {wall * 1000:.3f} ms = {128 / wall:,.0f} images/s")
    print(
        f"GPU busy per iteration (sum of kernel times, profiled): {busy:.3f} ms = {100 * busy / (wall * 1000):.0f}% "
        f"of the wall time; {len(kernels) / args.iterations:.0f} kernels per iteration, "
        f"{1000 * busy / max(1, len(kernels) / args.iterations):.1f} us each on average"
    )
    print("\nkernel time per iteration by kind:")
    for label, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {label:32s} {ms:7.3f} ms  {100 * ms / busy:5.1f}%")
    print("\ntop kernels (time per iteration, launches per iteration):")
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:15]
    for name, times in top:
        print(f"  {sum(times) / args.iterations / 1000:7.3f} ms {len(times) / args.iterations:6.1f}x  {name[:110]}")
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
