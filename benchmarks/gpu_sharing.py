"""Do several runs on one GPU go faster together than one after another?

Starts k `resexp bench --no-reference --json` processes at once (k = 1, 2, 4, ...), each timing
the fast path of one net, and prints their summed throughput: what a sweep gains from
`hydra/launcher=joblib hydra.launcher.n_jobs=k` on one GPU. Each process warms up (compiles)
first, so their timed windows overlap when --iterations is long enough.

    python benchmarks/gpu_sharing.py --net residual-20 --jobs 1 2 4 8 --iterations 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="residual-20", help="mode-depth")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--extra", nargs="*", default=[], help="more `resexp bench` options")
    args = parser.parse_args()
    mode, depth = args.net.split("-")
    print(f"{args.net}, {args.iterations} timed iterations per process")
    single = None
    for k in args.jobs:
        cmd = [
            sys.executable,
            "-m",
            "resexp",
            "bench",
            "--depths",
            depth,
            "--modes",
            mode,
            "--no-reference",
            "--json",
            "--iterations",
            str(args.iterations),
            *args.extra,
        ]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        rates = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode:
                sys.exit(f"bench failed with exit {p.returncode}")
            rates.append(json.loads(out)["timings"][0]["images_per_s"])
        total = sum(rates)
        single = single or total / k
        print(
            f"{k} processes: {total:,.0f} images/s together ({total / single:.2f}x one process; each "
            f"{', '.join(f'{r:,.0f}' for r in rates)})",
            flush=True,
        )


if __name__ == "__main__":
    main()
