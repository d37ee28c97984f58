"""Trust at paper scale: the measurements that explain resexp's CIFAR-10 numbers, scripted to run
unattended on a GPU machine in pieces of at most ~10 minutes.

Parts (each a list of `resexp train` runs, in order; --part picks them):

  pytest     `pytest -m gpu`: the CUDA paths against fp32 eager
  data       the JPEG penalty: ResNet-20 on the 8,380 exact training images vs the JPEG copies of
             the same images (cut out of the JPEG file with the exact subset's idx_train and
             idx_test), each tested on the matching 1,017 test images; --seeds each
  precision  the bf16 and CUDA-graph penalties: the same exact-data runs with speed.precision=fp32
             (graph kept) and fully eager fp32, against the default path of `data`
  full       ResNet-20, the paper's 64k iterations on all 50k JPEG images: default path and fp32
             eager (the paper: 8.75% test error)
  fig6       Figure 6 (plain and residual 20/32/44/56 on 45k/5k, JPEG images), --seeds
  table6     Table 6 (ResNet-20/32/44/56/110 on all 50k, JPEG images), --seeds

Every run is a real `python -m resexp train` in its own process. The script stops starting runs
when --budget-s is spent and stops the run in progress with SIGTERM at the deadline, which makes it
save a checkpoint: running the same command again (the next device call) resumes where it stopped
and skips what is finished. Once a part's runs are all complete it writes its figures to
OUT/verify-<part>.json and its markdown section to OUT/verify-<part>.md; OUT/verify.md is made anew
from those sections each time (a re-run replaces a part's section, never adds a copy).

It fails closed. Exit status: 0 every part asked for measured what it should; 3 the budget ran out
first (run the same command again); 1 a part failed or measured nothing (`pytest -m gpu` with every
test skipped, a run that failed): one line says which and why, and running it again will not help
until that is fixed.

On the device machine (hydra-core, omegaconf and antlr4 carried as wheels, the two data files in a
git-ignored folder, e.g. .carry/data):

    python benchmarks/gpu_verify.py --data .carry/data --part data precision --budget-s 540 --out $OUT

At a tiny size on a CPU (what the test suite does): --device cpu --iterations 8 --eval-every 4.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resexp.commands.report import PAPER as PAPER_ERRORS
from resexp.rundir.folder import atomic_write

PARTS = ("pytest", "data", "precision", "full", "fig6", "table6")
DONE, OUT_OF_TIME, FAILED = 0, 3, 1
# What each part reads from --data.
NEEDS = {
    "data": ("cifar10.npz", "cifar10_jpeg_full.npz"),
    "precision": ("cifar10.npz",),
    "full": ("cifar10_jpeg_full.npz",),
    "fig6": ("cifar10_jpeg_full.npz",),
    "table6": ("cifar10_jpeg_full.npz",),
}


class PartFailed(Exception):
    """A part that failed or measured nothing: the one line to show."""


EAGER_FP32 = [
    "speed.precision=fp32",
    "speed.channels_last=false",
    "speed.cuda_graph=false",
    "speed.fused_optimizer=false",
    "speed.cudnn_benchmark=false",
    "speed.compile=off",
]
PAPER = {depth: PAPER_ERRORS[("cifar10", "cifar", "residual", depth, "A")][0] for depth in (20, 32, 44, 56, 110)}


@dataclass
class Run:
    """One `resexp train` command of a part, and what the comparison calls it."""

    label: str  # e.g. "exact", "jpeg", "fp32-graph"
    overrides: list[str]
    multirun: bool = False
    results: list[dict] = field(default_factory=list)


def jpeg_subset(data: Path, work: Path) -> Path:
    """The JPEG copies of exactly the images of the exact subset (idx_train, idx_test), as an
    .npz resexp reads (JPEG bytes + offsets, decoded on load). Written outside the repository."""
    out = work / "cifar10_jpeg_subset.npz"
    if out.exists():
        return out
    with np.load(data / "cifar10.npz") as exact, np.load(data / "cifar10_jpeg_full.npz") as full:
        arrays = {}
        for split in ("train", "test"):
            idx = exact[f"idx_{split}"]
            raw, offsets = full[f"{split}_jpeg_bytes"], full[f"{split}_jpeg_offsets"]
            pieces = [raw[offsets[i] : offsets[i + 1]] for i in idx]
            arrays[f"{split}_jpeg_bytes"] = np.concatenate(pieces)
            arrays[f"{split}_jpeg_offsets"] = np.concatenate([[0], np.cumsum([len(p) for p in pieces])])
            arrays[f"y_{split}"] = full[f"y_{split}"][idx]
            if not np.array_equal(arrays[f"y_{split}"], exact[f"y_{split}"]):
                raise SystemExit(f"the JPEG file's {split} labels at idx_{split} differ from the exact subset's")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: np.savez(f, **arrays))
    return out


def plan(part: str, args: argparse.Namespace, work: Path) -> list[Run]:
    """The runs of a part. The exact-data runs on the default path are shared by `data` and
    `precision` (one run directory, trained once)."""
    seeds = ",".join(str(s) for s in args.seeds)
    short = [
        "model.depth=20",
        f"schedule.iterations={args.iterations}",
        f"eval_every={args.eval_every}",
        f"device={args.device}",
        f"seed={seeds}",
    ]
    exact = [f"data.root={args.data / 'cifar10.npz'}"]
    if part == "data":
        jpeg = [f"data.root={jpeg_subset(args.data, work)}"]
        return [
            Run("exact", [*short, *exact, "name=verify/exact"], multirun=True),
            Run("jpeg", [*short, *jpeg, "name=verify/jpeg"], multirun=True),
        ]
    if part == "precision":
        runs = [Run("default", [*short, *exact, "name=verify/exact"], multirun=True)]
        if args.device != "cpu":  # the graph exists on CUDA only
            runs.append(Run("fp32-graph", [*short, *exact, "speed.precision=fp32", "name=verify/fp32_graph"], True))
        runs.append(Run("fp32-eager", [*short, *exact, *EAGER_FP32, "name=verify/fp32_eager"], multirun=True))
        return runs
    full = [f"data.root={args.data}", "data.file=cifar10_jpeg_full.npz", f"device={args.device}"]
    paper_length = [f"schedule.iterations={args.full_iterations}"] if args.full_iterations else []
    if part == "full":
        return [
            Run("default", [*full, *paper_length, "model.depth=20", "seed=0", "name=verify/full"]),
            Run("fp32-eager", [*full, *paper_length, "model.depth=20", "seed=0", *EAGER_FP32, "name=verify/full_fp32"]),
        ]
    if part == "fig6":
        return [Run("fig6", ["+experiment=cifar_fig6", *full, *paper_length, f"seed={seeds}"], multirun=True)]
    if part == "table6":
        return [Run("table6", ["+experiment=cifar_table6", *full, *paper_length, f"seed={seeds}"], multirun=True)]
    raise SystemExit(f"unknown part {part}: choose from {', '.join(PARTS)}")


def train(run: Run, deadline: float) -> bool:
    """Train (or resume) one command until it finishes or the deadline comes; whether it finished.
    PartFailed when the command itself failed (running it again would fail the same way)."""
    left = deadline - time.monotonic()
    if left < 30:
        return False
    cmd = [sys.executable, "-m", "resexp", "train", *(["-m"] if run.multirun else []), *run.overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the run saves a checkpoint; the next call resumes it
        proc.wait()
        print(f"budget spent: {run.label} stopped with a checkpoint; run the same command again", flush=True)
        return False
    if code != 0:
        raise PartFailed(f"{run.label}: resexp train exited with status {code} (its own line above says why)")
    return True


def gpu_tests(out: Path) -> str:
    """`pytest -m gpu`: a summary line; PartFailed when a test failed or none ran (no CUDA device,
    nothing collected): a part that measured nothing is not a success."""
    report = out / "pytest-gpu.xml"
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", f"--junitxml={report}"]
    )
    try:
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    except (OSError, ElementTree.ParseError, IndexError):
        raise PartFailed(f"pytest -m gpu exited with status {code} and wrote no report") from None
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    line = (
        f"pytest -m gpu: {passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    )
    (out / "verify-pytest.txt").write_text(line + f" (exit status {code})\n")
    if code != 0 or counts["failures"] or counts["errors"]:
        raise PartFailed(f"{line} (exit status {code})")
    if passed == 0:
        raise PartFailed(f"{line}: nothing was measured (no CUDA device here?)")
    return line


def results(run: Run) -> list[dict]:
    """Each run directory of the command: its last evaluation."""
    from resexp.rundir.read import find_runs

    name = next(o.split("=", 1)[1] for o in run.overrides if o.startswith("name="))
    found = find_runs(Path("runs") / name, lambda text: None)
    return [
        {
            "run": str(r.path),
            "net": r.label,
            "seed": r.seed,
            "state": r.state,
            "test_error": r.rows[-1]["test/error"],
            "train_error": r.rows[-1]["train/error"],
            "minutes": round(r.rows[-1].get("time", 0) / 60, 2),
        }
        for r in found
        if r.rows
    ]


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def penalty(base: list[dict], other: list[dict]) -> list[float]:
    """Test-error differences other - base, paired by seed."""
    by_seed = {r["seed"]: r["test_error"] for r in base}
    return [r["test_error"] - by_seed[r["seed"]] for r in other if r["seed"] in by_seed]


def summarise(part: str, runs: list[Run]) -> tuple[dict, str]:
    figures: dict = {"part": part, "runs": {run.label: run.results for run in runs}}
    lines = [f"## {part}", ""]
    for run in runs:
        errors = [r["test_error"] for r in run.results]
        lines.append(f"- {run.label}: test error {spread(errors)} %")
    base = runs[0].results
    for run in runs[1:]:
        if part in ("data", "precision"):
            diffs = penalty(base, run.results)
            figures[f"{run.label} - {runs[0].label}"] = diffs
            lines.append(f"- {run.label} minus {runs[0].label}, paired by seed: {spread(diffs)} points")
    if part == "full":
        lines.append(f"- the paper's ResNet-20: {PAPER[20]} %")
    lines.append("")
    return figures, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["pytest", "data", "precision"], choices=PARTS)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of the two CIFAR-10 files")
    parser.add_argument("--work", type=Path, default=Path(".carry/verify"), help="derived data (git-ignored)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/verify")))
    parser.add_argument("--budget-s", type=float, default=540, help="stop starting (and stop) runs after this")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=16000, help="data/precision runs")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--full-iterations", type=int, default=None, help="full/fig6/table6 (default: the paper's)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    missing = sorted({f for part in args.part for f in NEEDS.get(part, ()) if not (args.data / f).is_file()})
    if missing:
        print(
            f"error: --data {args.data} lacks {', '.join(missing)} (the CIFAR-10 files of ../shared/data)",
            file=sys.stderr,
        )
        return FAILED
    deadline = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    status = DONE
    for part in args.part:
        try:
            if part == "pytest":
                print(gpu_tests(args.out), flush=True)
                continue
            runs = plan(part, args, args.work)
            if not all([train(run, deadline) for run in runs]):
                print(f"{part}: not finished within the budget; run the same command again to go on", flush=True)
                status = OUT_OF_TIME if status == DONE else status
                continue
            for run in runs:
                run.results = results(run)
            figures, text = summarise(part, runs)
        except PartFailed as e:
            print(f"error: {part}: {e}", file=sys.stderr, flush=True)
            status = FAILED
            continue
        atomic_write(args.out / f"verify-{part}.json", json.dumps(figures, indent=1))
        atomic_write(args.out / f"verify-{part}.md", text + "\n")
        print(text, flush=True)
        if part in ("fig6", "table6"):
            name = "cifar_fig6" if part == "fig6" else "cifar_table6"
            subprocess.call([sys.executable, "-m", "resexp", "plot", f"runs/{name}", "--out", str(args.out / name)])
            with open(args.out / f"{name}.md", "w") as f:
                subprocess.call([sys.executable, "-m", "resexp", "report", f"runs/{name}"], stdout=f)
    sections = [args.out / f"verify-{part}.md" for part in PARTS if (args.out / f"verify-{part}.md").exists()]
    if sections:  # made anew from each part's latest section
        atomic_write(args.out / "verify.md", "".join(p.read_text() for p in sections))
    return status


if __name__ == "__main__":
    sys.exit(main())
