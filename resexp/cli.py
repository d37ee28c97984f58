"""The `resexp` command line (Typer).

`resexp train [OVERRIDES...]` hands its overrides to Hydra, which composes configs/ and calls
`hydra_task` once (a run) or once per combination (`-m`, a sweep through Hydra's own multirun
machinery, so launcher plugins such as joblib or submitit work unchanged). Errors a user can fix
(a bad override, a missing dataset, an impossible depth) end in one line and exit status 1;
`--debug` (or HYDRA_FULL_ERROR=1) shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reproduce the degradation problem of He et al. 2015: train plain and residual nets, compare their curves.",
)
err = Console(stderr=True)


class RunFailed(Exception):
    """A run of a sweep ended with an error already reported; Hydra goes on with the other runs
    and raises this again at the end of the sweep."""


class RunAborted(BaseException):
    """A single run ended with an error already reported. Not an Exception, so that it passes
    through Hydra's job wrapper instead of being reported a second time."""


def hydra_task(cfg) -> float | None:
    """One run, called by Hydra with the composed config; returns the final test error."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from resexp.checkpoint import CheckpointError
    from resexp.config import ConfigError, to_object
    from resexp.data import DataError
    from resexp.train import Diverged, run

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    config = to_object(cfg)
    parallel = hydra_cfg.launcher.get("n_jobs") if hydra_cfg.mode == RunMode.MULTIRUN else None
    if parallel is not None:
        config.device = share_machine(config.device, hydra_cfg.job.num, parallel)
    try:
        metrics = run(config, run_dir, console=err)
    except (ConfigError, DataError, CheckpointError, Diverged, OSError) as e:
        remove_empty(run_dir, levels=4)
        if os.environ.get("RESEXP_DEBUG"):
            raise
        kind = "diverged" if isinstance(e, Diverged) else "error"
        err.print(f"[bold red]{kind}:[/] {escape(one_line(e))}", highlight=False, soft_wrap=True)
        raise (RunAborted if hydra_cfg.mode == RunMode.RUN else RunFailed)(str(e)) from None
    return metrics.get("test/error")


def share_machine(device: str, job_num: int, n_jobs: int) -> str:
    """For runs of a sweep launched side by side (e.g. hydra/launcher=joblib): spread them over
    the visible GPUs (several runs per GPU is fine), and on a CPU give each its share of the
    cores, since threads of several runs fighting over the same cores slow all of them down."""
    import torch

    cores = os.cpu_count() or 1
    n_jobs = cores if n_jobs is None or n_jobs < 1 else n_jobs
    if device == "auto" and torch.cuda.is_available():
        return f"cuda:{job_num % torch.cuda.device_count()}"
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        torch.set_num_threads(max(1, cores // n_jobs))
    return device


def remove_empty(run_dir: Path, levels: int) -> None:
    """Hydra makes the run directory (and its parents) before the run starts; drop them again if
    nothing was written, so a failed start leaves nothing that plot or report would take for a run."""
    for path in [run_dir, *run_dir.parents][:levels]:
        try:
            path.rmdir()
        except OSError:
            return


def one_line(e: BaseException) -> str:
    """An error as one line: OS errors as 'what: where', Hydra/OmegaConf errors as the message and
    its cause without the key dump."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    lines = str(e).strip().splitlines()
    text = lines[0].rstrip(".") if lines else type(e).__name__
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        text += ": " + str(cause).strip().splitlines()[0]
        fields = getattr(getattr(cause, "object_type", None), "__dataclass_fields__", None)
        if fields and "not in" in text:
            text += f" (valid keys: {', '.join(fields)})"
    starts = [i for i, line in enumerate(lines) if line.startswith("Available options")]
    if starts:
        options = []
        for line in lines[starts[0] + 1 :]:
            if not line.startswith("\t"):
                break
            if not line.strip().startswith("base_"):
                options.append(line.strip())
        text += " (available: " + ", ".join(options) + ")"
    return text


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Train a net, or sweep several with -m. OVERRIDES are Hydra overrides, e.g. "
    "model.depth=56 model.mode=plain model.shortcut=B data=cifar100 optim.lr=0.05 schedule.iterations=2000. "
    "Runs land in runs/<name>/<data>/<mode>-<depth><option>_s<seed>/; re-running a command resumes its run.",
)
def train(
    overrides: list[str] | None = typer.Argument(None, help="Hydra overrides (key=value, group=option)."),
    multirun: bool = typer.Option(False, "--multirun", "-m", help="Sweep: one run per combination of comma lists."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    import hydra

    from resexp.config import CONFIG_DIR, register, register_resolvers
    from resexp.train import Interrupted

    register()
    register_resolvers()
    full_error = debug or bool(os.environ.get("HYDRA_FULL_ERROR"))
    saved_env, argv = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", "RESEXP_DEBUG")}, sys.argv
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us; we decide how much to show
    if debug:
        os.environ["RESEXP_DEBUG"] = "1"
    main = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(hydra_task)
    sys.argv = ["resexp train"] + (["--multirun"] if multirun else []) + list(overrides or [])
    try:
        main()
    except (RunFailed, RunAborted):
        raise typer.Exit(1)
    except Interrupted as e:
        raise typer.Exit(128 + e.signum)  # the run said where its checkpoint is and how to resume
    except KeyboardInterrupt:
        err.print("aborted (second interrupt): no checkpoint saved since the last evaluation", highlight=False)
        raise typer.Exit(130)
    except Exception as e:
        if full_error:
            raise
        err.print(f"[bold red]error:[/] {escape(one_line(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    finally:
        sys.argv = argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@app.command(help="List the standard variants: CIFAR 20..1202 and ImageNet 18..152, plain and residual "
             "under each shortcut option, with parameters and multiply-adds per image.")  # fmt: skip
def models(as_json: bool = typer.Option(False, "--json", help="Print the rows as a JSON list of objects.")) -> None:
    from rich.table import Table

    from resexp.models import variant_rows

    rows = variant_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title="He et al. 2015 variants (CIFAR: 10 classes, 32x32; ImageNet: 1000 classes, 224x224)")
    for column in ("family", "depth", "mode", "shortcut", "params", "multiply-adds"):
        table.add_column(column, justify="right" if column in ("depth", "params", "multiply-adds") else "left")
    for r in rows:
        macs = f"{r['macs'] / 1e6:.1f}M" if r["macs"] < 1e9 else f"{r['macs'] / 1e9:.2f}G"
        table.add_row(r["family"], str(r["depth"]), r["mode"], r["shortcut"], f"{r['params'] / 1e6:.3f}M", macs)
    Console().print(table)


@app.command(help="Measure training images/s of resexp's path and of a reference loop written the common way "
             "(fp32 eager, torchvision transforms on PIL images in DataLoader workers) on one device, and "
             "project one 64k-iteration run and the 8-run Figure-6 sweep. Speed options default to what "
             "`resexp train` uses on the device.")  # fmt: skip
def bench(
    depths: str = typer.Option("20,56", help="Comma list of CIFAR depths (6n+2)."),
    modes: str = typer.Option("residual,plain", help="Comma list: residual, plain."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    iterations: int | None = typer.Option(None, help="Timed iterations per net.",
                                          show_default="300 on CUDA, 10 on CPU"),  # fmt: skip
    warmup: int | None = typer.Option(None, help="Untimed iterations first (the reference loop: at most 10).",
                                      show_default="50 on CUDA, 2 on CPU"),  # fmt: skip
    reference_iterations: int | None = typer.Option(None, help="Timed iterations of the reference loop.",
                                                    show_default="as --iterations"),  # fmt: skip
    batch_size: int = typer.Option(128, help="Training batch size."),
    workers: int | None = typer.Option(None, help="Reference DataLoader workers.", show_default="min(8, cores)"),
    images: int = typer.Option(50_000, help="Size of the (random) training set."),
    precision: str = typer.Option("auto", help="auto, fp32 or bf16."),
    compile_mode: str = typer.Option("auto", "--compile", help="auto, off, default, reduce-overhead, "
                                     "max-autotune, max-autotune-no-cudagraphs."),  # fmt: skip
    channels_last: bool | None = typer.Option(None, "--channels-last/--no-channels-last",
                                          help="NHWC activations.", show_default="on for CUDA"),  # fmt: skip
    fused_optimizer: bool | None = typer.Option(None, "--fused/--no-fused", help="Fused SGD.",
                                                show_default="on for CUDA"),  # fmt: skip
    cuda_graph: bool | None = typer.Option(None, "--cuda-graph/--no-cuda-graph", help="Replay each iteration as "
                                           "one CUDA graph.", show_default="on for CUDA"),  # fmt: skip
    cudnn_benchmark: bool | None = typer.Option(None, "--cudnn-benchmark/--no-cudnn-benchmark",
                                                help="cuDNN algorithm search.",
                                                show_default="on for CUDA"),  # fmt: skip
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time the reference loop."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
) -> None:
    from resexp.bench import run_bench
    from resexp.config import ConfigError
    from resexp.models import net_spec
    from resexp.speed import speed_from
    from resexp.train import pick_device

    try:
        dev = pick_device(device)
        depth_list = [int(d) for d in depths.split(",")]
        for d in depth_list:
            net_spec("cifar", d)
        mode_list = modes.split(",")
        if not set(mode_list) <= {"plain", "residual"}:
            raise ValueError(f"--modes {modes}: valid modes are plain, residual")
        speed = speed_from(precision, channels_last, compile_mode, fused_optimizer, cuda_graph, cudnn_benchmark, dev)
        if min(batch_size, images) < 1 or images < batch_size:
            raise ValueError(f"--images {images} must be at least --batch-size {batch_size} (and positive)")
    except (ConfigError, ValueError) as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(1)
    cuda = dev.type == "cuda"
    iterations = iterations or (300 if cuda else 10)
    warmup = warmup if warmup is not None else (50 if cuda else 2)
    progress = (lambda text: None) if as_json else (lambda text: err.print(f"bench {text}", highlight=False))
    result = run_bench(depth_list, mode_list, speed, dev, batch_size, iterations, warmup, reference_iterations,
                       workers, images, reference, progress)  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    from resexp.bench import render

    console = Console()
    console.width = max(console.width, 120)
    console.print(render(result))


def runs_in(runs_dir: Path):
    from resexp.runs import find_runs

    if not runs_dir.exists():
        err.print(f"[bold red]error:[/] {escape(str(runs_dir))} does not exist", highlight=False)
        raise typer.Exit(1)
    runs = find_runs(runs_dir)
    if not runs:
        err.print(f"[bold red]error:[/] no runs (folders with config.yaml and metrics.jsonl) under {escape(str(runs_dir))}",
                  highlight=False)  # fmt: skip
        raise typer.Exit(1)
    return runs


@app.command(help="Draw the paper-style figure (Figures 1, 4, 6) from the runs under RUNS_DIR: error vs "
             "iterations, dashed = training, bold = test, plain left, residual right. Writes PNG and SVG.")  # fmt: skip
def plot(
    runs_dir: Path = typer.Argument(..., help="A sweep folder (e.g. runs/cifar_quick) or any folder of runs."),
    out: Path | None = typer.Option(None, "--out", help="Output path without suffix.", show_default="RUNS_DIR/curves"),
) -> None:
    from resexp.plot import plot as draw

    for path in draw(runs_in(runs_dir), out if out is not None else runs_dir / "curves"):
        typer.echo(str(path))


@app.command(help="Tabulate the runs under RUNS_DIR per mode x depth (mean ± std over seeds) beside the paper's "
             "numbers, with a verdict on the degradation problem. Works on unfinished sweeps.")  # fmt: skip
def report(
    runs_dir: Path = typer.Argument(..., help="A sweep folder (e.g. runs/cifar_quick) or any folder of runs."),
    form: str = typer.Option("markdown", "--format", help="markdown, csv or json."),
) -> None:
    from resexp.report import render

    if form not in ("markdown", "csv", "json"):
        err.print(f"[bold red]error:[/] --format {escape(form)} is unknown: use markdown, csv or json", highlight=False)
        raise typer.Exit(1)
    typer.echo(render(runs_in(runs_dir), form), nl=False)


if __name__ == "__main__":
    # `python -m resexp.cli`: run the app of the importable module, not of __main__, so that
    # launchers which pickle the task (joblib) find it by name.
    from resexp.cli import app as importable_app

    importable_app()
