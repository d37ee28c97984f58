"""Does the fast path reach the same test error as the reference loop?

Trains ResNet-20 (or --depth) on a fixed short schedule, several seeds, once through `resexp
train`'s own code (resexp.run.lifecycle.run, with the speed settings of the device) and once through
resexp.commands.reference (fp32 eager, torchvision transforms in DataLoader workers), same data, same
SGD and schedule, and prints the final test errors with mean ± std per path and the gap.
Each (path, seed) runs in its own process, --parallel at a time (they share the GPU).

    python benchmarks/accuracy.py --data ../shared/data/cifar10_jpeg_full.npz
    python benchmarks/accuracy.py --data ../shared/data/cifar10.npz --iterations 200 --milestones 150 --device cpu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def fast_run(args: argparse.Namespace, seed: int, run_dir: Path) -> float:
    from resexp.launch.jobs import compose
    from resexp.run.lifecycle import run

    cfg = compose(
        [
            f"data.root={args.data}",
            f"model.depth={args.depth}",
            f"schedule.iterations={args.iterations}",
            f"schedule.milestones=[{args.milestones}]",
            f"eval_every={args.iterations}",
            f"seed={seed}",
            f"device={args.device}",
        ]
    )
    return run(cfg, run_dir)["test/error"]


def reference_run(args: argparse.Namespace, seed: int) -> float:
    from resexp.commands import reference
    from resexp.config import DataConfig, ScheduleConfig
    from resexp.data.cifar import load_arrays
    from resexp.device import pick_device, seed_everything
    from resexp.nets.build import build_net
    from resexp.run.schedule import Schedule
    from resexp.run.setup import make_optimizer
    from resexp.run.step import set_lr

    device = pick_device(args.device)
    seed_everything(seed)
    a = load_arrays(DataConfig(root=args.data))
    train, test = reference.loaders(
        a.x_train, a.y_train, a.x_test, a.y_test, 128, args.workers, seed, pin_memory=device.type == "cuda"
    )
    model = build_net("cifar", args.depth, "residual", "A", 10).to(device)
    optimizer = make_optimizer(model, 0.1, 0.9, 1e-4)
    milestones = [int(m) for m in args.milestones.split(",")]
    schedule = Schedule(0.1, ScheduleConfig(iterations=args.iterations, milestones=milestones))
    batches = reference.batches(train)
    for step in range(args.iterations):
        x, y = next(batches)
        set_lr(optimizer, schedule.lr(step))
        reference.step(model, optimizer, x, y, device)
    return reference.test_error(model, test, device)


def one(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        error = fast_run(args, args.seed, Path(tmp) / "run") if args.one == "fast" else reference_run(args, args.seed)
    print(json.dumps({"path": args.one, "seed": args.seed, "test_error": error, "wall_s": time.perf_counter() - start}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an .npz (x_train... or the JPEG npz)")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=8000)
    parser.add_argument("--milestones", default="4000,6000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=4, help="reference DataLoader workers per run")
    parser.add_argument("--parallel", type=int, default=6)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--one", choices=["fast", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    jobs = [(path, int(s)) for s in args.seeds.split(",") for path in ("fast", "reference")]
    common = [
        f"--data={args.data}",
        f"--depth={args.depth}",
        f"--iterations={args.iterations}",
        f"--milestones={args.milestones}",
        f"--device={args.device}",
        f"--workers={args.workers}",
    ]
    rows, running, start = [], [], time.perf_counter()
    while jobs or running:
        while jobs and len(running) < args.parallel:
            path, seed = jobs.pop(0)
            cmd = [sys.executable, __file__, *common, f"--one={path}", f"--seed={seed}"]
            running.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
        done = running.pop(0)
        out, _ = done.communicate()
        if done.returncode:
            sys.exit(f"a run failed (exit {done.returncode}): {' '.join(done.args)}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nResNet-{args.depth}, {args.iterations} iterations (lr 0.1, / 10 at {args.milestones}), "
        f"{time.perf_counter() - start:.0f} s wall"
    )
    means = {}
    for path in ("fast", "reference"):
        errors = np.array([r["test_error"] for r in rows if r["path"] == path])
        means[path] = errors.mean()
        print(
            f"{path:9s} test error {errors.mean():.2f} ± {errors.std(ddof=1) if len(errors) > 1 else 0:.2f} "
            f"(seeds: {', '.join(f'{e:.2f}' for e in errors)})"
        )
    print(f"gap (fast - reference): {means['fast'] - means['reference']:+.2f} points")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
