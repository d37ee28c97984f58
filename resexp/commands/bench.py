"""`resexp bench`: training throughput of resexp's path against the common way, on one device.

For each net, two measurements in the same process on the same device, each after its own
warm-up (which takes in compilation and DataLoader start-up, and is reported apart):
- fast: resexp's own data path and training step (uint8 set on the device, crop/flip/normalise
  as batched tensor ops; resexp.run.step) under the speed settings `resexp train` would use there;
- reference: resexp.commands.reference, fp32 eager with torchvision transforms on PIL images in
  DataLoader workers.
The images are random uint8 CIFAR-shaped arrays: throughput does not depend on their content.
From the timings it projects one 64k-iteration run (the paper's CIFAR schedule) and the 8-run
Figure-6 sweep (plain and residual at depth 20, 32, 44, 56, one run at a time; 32 and 44
interpolated linearly in depth between the measured 20 and 56).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from resexp.commands import reference
from resexp.data.cifar import Normalizer, TensorTrainStream
from resexp.data.common import endless
from resexp.device import pick_device
from resexp.errors import OptionError, within
from resexp.launch.jobs import compose
from resexp.nets.build import build_net
from resexp.nets.costs import training_memory
from resexp.nets.spec import Mode, net_spec, valid_depths
from resexp.run.setup import fits, make_optimizer
from resexp.run.speed import Speed, resolve
from resexp.run.step import Running, make_step

PAPER_ITERATIONS = 64_000


FIG6_DEPTHS = (20, 32, 44, 56)


@dataclass
class Timing:
    net: str  # e.g. residual-56
    path: str  # fast | reference
    images_per_s: float
    ms_per_iteration: float
    warmup_s: float  # first iterations, compilation and worker start-up included
    peak_memory_mb: float | None  # peak device memory allocated (CUDA only)
    projected_run_s: float  # warm-up + 64k iterations


def check_options(
    depths: str, modes: str, images: int, batch_size: int, device: torch.device
) -> tuple[list[int], list[str]]:
    """The depths and modes of `resexp bench`, checked (OptionError names the option), and whether
    the images and each net fit in memory."""
    try:
        depth_list = [int(d) for d in depths.split(",")]
        for d in depth_list:
            net_spec("cifar", d)
    except ValueError:
        raise OptionError(f"--depths {depths} must be a comma list of CIFAR depths: {valid_depths('cifar')}") from None
    mode_list = modes.split(",")
    if not set(mode_list) <= set(Mode):
        raise OptionError(f"--modes {modes} must be a comma list of {', '.join(Mode)}")
    if images < batch_size:
        raise OptionError(f"--images {images} must be at least data.batch_size={batch_size}")
    host = torch.device("cpu")
    fits(3 * images * 32 * 32 * 3, host, f"--images {images}", advice="use fewer --images")  # array, tensor, reference
    if device.type == "cuda":
        fits(images * 32 * 32 * 3, device, f"--images {images}", advice="use fewer --images")
    for d in depth_list:
        params, needed = training_memory("cifar", d, batch_size, 32, 10)
        fits(needed, device, f"--depths {d} at a batch of {batch_size}", params)
    return depth_list, mode_list


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def synthetic_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    step: Callable[[], None], warmup: int, iterations: int, batch_size: int, device: torch.device, net: str, path: str
) -> Timing:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm = time.perf_counter()
    for _ in range(iterations):
        step()
    sync(device)
    seconds = (time.perf_counter() - warm) / iterations
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    warmup_s = warm - start
    return Timing(
        net, path, batch_size / seconds, 1000 * seconds, warmup_s, peak, warmup_s + PAPER_ITERATIONS * seconds
    )


def fast_step(
    depth: int, mode: str, x: np.ndarray, y: np.ndarray, batch_size: int, speed: Speed, device: torch.device
) -> Callable[[], None]:
    """One call = one iteration of resexp's loop body: next batch, then the step."""
    stream = TensorTrainStream(x, y, batch_size, Normalizer(x, "pixel_mean", device), True, 0, device)
    torch.manual_seed(0)
    model = speed.place(build_net("cifar", depth, mode, "A", 10).to(device))
    optimizer = make_optimizer(model, 0.1, 0.9, 1e-4, speed)
    train_step, data = make_step(model, optimizer, Running(device), speed, speed.scaler()), endless(stream, 0)

    def step() -> None:
        x, y = next(data)
        train_step(x, y, 0.1)

    return step


def reference_step(
    depth: int, mode: str, x: np.ndarray, y: np.ndarray, batch_size: int, workers: int, device: torch.device
) -> Callable[[], None]:
    train, _ = reference.loaders(x, y, x[:1], y[:1], batch_size, workers, 0, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = build_net("cifar", depth, mode, "A", 10).to(device)
    optimizer = make_optimizer(model, 0.1, 0.9, 1e-4)
    data = reference.batches(train)

    def step() -> None:
        x, y = next(data)
        reference.step(model, optimizer, x, y, device)

    return step


def fig6_projection(timings: list[Timing], path: str) -> float | None:
    """Seconds for the 8 Figure-6 runs one after another, or None without depths 20 and 56 of
    both modes."""
    by_net = {t.net: t for t in timings if t.path == path}
    total = 0.0
    for mode in ("plain", "residual"):
        low, high = by_net.get(f"{mode}-20"), by_net.get(f"{mode}-56")
        if low is None or high is None:
            return None
        for depth in FIG6_DEPTHS:
            w = (depth - 20) / 36
            total += (1 - w) * low.projected_run_s + w * high.projected_run_s
    return total


def run_bench(
    depths: list[int],
    modes: list[str],
    speed: Speed,
    device: torch.device,
    batch_size: int = 128,
    iterations: int = 200,
    warmup: int = 30,
    reference_iterations: int | None = None,
    workers: int | None = None,
    images: int = 50_000,
    with_reference: bool = True,
    progress: Callable[[str], None] = lambda text: None,
) -> dict:
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    reference_iterations = reference_iterations or iterations
    x, y = synthetic_images(images)
    timings: list[Timing] = []
    for depth in depths:
        for mode in modes:
            net = f"{mode}-{depth}"
            progress(f"{net}: fast path")
            step = fast_step(depth, mode, x, y, batch_size, speed, device)
            timings.append(measure(step, warmup, iterations, batch_size, device, net, "fast"))
            del step
            if with_reference:
                progress(f"{net}: reference loop ({workers} workers)")
                step = reference_step(depth, mode, x, y, batch_size, workers, device)
                timings.append(
                    measure(step, min(warmup, 10), reference_iterations, batch_size, device, net, "reference")
                )
                del step
            if speed.compile != "off":
                torch._dynamo.reset()  # drop this net's compiled graphs (and CUDA graph memory)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    by = {(t.net, t.path): t for t in timings}
    ratios = {
        net: by[net, "fast"].images_per_s / by[net, "reference"].images_per_s for net, path in by if path == "reference"
    }
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "batch_size": batch_size,
        "speed": speed.describe(),
        "reference_workers": workers if with_reference else None,
        "timed_iterations": {"fast": iterations, "reference": reference_iterations if with_reference else 0},
        "timings": [asdict(t) for t in timings],
        "speedup": ratios,
        "fig6_sweep_s": {path: fig6_projection(timings, path) for path in ("fast", "reference")},
    }


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def render(result: dict):
    """The bench result as a rich table plus the projections, for the console."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    s = result["speed"]
    title = (
        f"{result['device']}, torch {result['torch']}, batch {result['batch_size']}; fast path: "
        f"{s['precision']}, channels_last {'on' if s['channels_last'] else 'off'}, compile {s['compile']}, "
        f"fused SGD {'on' if s['fused_optimizer'] else 'off'}"
    )
    if result["reference_workers"] is not None:  # None: --no-reference
        title += f"; reference: fp32 eager, {result['reference_workers']} DataLoader workers"
    table = Table(title=title, title_justify="left")
    for column in ("net", "path", "images/s", "ms/iteration", "warm-up", "peak memory", "64k-iteration run"):
        table.add_column(column, justify="left" if column in ("net", "path") else "right")
    for t in result["timings"]:
        memory = "-" if t["peak_memory_mb"] is None else f"{t['peak_memory_mb']:.0f} MiB"
        table.add_row(
            t["net"],
            t["path"],
            f"{t['images_per_s']:,.0f}",
            f"{t['ms_per_iteration']:.2f}",
            f"{t['warmup_s']:.1f} s",
            memory,
            minutes(t["projected_run_s"]),
        )
    lines = [f"{net}: fast path {ratio:.1f}x the reference loop" for net, ratio in result["speedup"].items()]
    sweep = result["fig6_sweep_s"]
    if sweep["fast"] is not None:
        lines.append(
            f"Figure-6 sweep (8 runs of 64k iterations, one at a time): fast path {minutes(sweep['fast'])}"
            + (f", reference loop {minutes(sweep['reference'])}" if sweep["reference"] else "")
        )
    return Group(table, Text("\n".join(lines)))


def bench(
    overrides: list[str],
    depths: str = "20,56",
    modes: str = "residual,plain",
    iterations: int | None = None,
    warmup: int | None = None,
    reference_iterations: int | None = None,
    workers: int | None = None,
    images: int = 50_000,
    with_reference: bool = True,
    progress: Callable[[str], None] = lambda text: None,
) -> dict:
    """`resexp bench`: the options checked, then every net measured (the defaults: 300 timed
    iterations and 50 of warm-up on CUDA, 10 and 2 on a CPU)."""
    cfg = compose(overrides)
    device = pick_device(cfg.device)
    batch_size = cfg.data.batch_size
    depth_list, mode_list = check_options(depths, modes, images, batch_size, device)
    within(
        ("--iterations", iterations, 1, math.inf),
        ("--reference-iterations", reference_iterations, 1, math.inf),
        ("--warmup", warmup, 0, math.inf),
        ("--workers", workers, 0, max(8, os.cpu_count() or 1)),
    )
    cuda = device.type == "cuda"
    return run_bench(
        depth_list,
        mode_list,
        resolve(cfg.speed, device),
        device,
        batch_size,
        iterations or (300 if cuda else 10),
        warmup if warmup is not None else (50 if cuda else 2),
        reference_iterations,
        workers,
        images,
        with_reference,
        progress,
    )
