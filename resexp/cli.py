"""The `resexp` command line (Typer).

`resexp train [-m] [OVERRIDES...]` composes and checks every job of the command, then hands it
to Hydra (resexp.launch), so -m is Hydra's own multirun and launcher plugins such as joblib or
submitit work unchanged. The error boundary is here, one for every command (`boundary`): every
mistake ends in one line and exit status 1 (`--debug` shows the traceback instead), Ctrl-C in exit
status 130, and "an unexpected error" only for a genuine bug; an interrupted run says how to resume.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from resexp.commands.terminal import boundary, err, note, quiet_unless_main, rich_table, wide_console
from resexp.errors import FAILED, OptionError, signalled

DEBUG = typer.Option(False, "--debug", help="Show full tracebacks on errors.")
# Upper bounds of analysis options: beyond them a computation takes days or more memory than a laptop has.

try:  # typer vendors click since 0.2x; earlier versions use click itself
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError


class Commands(typer.core.TyperGroup):
    """resexp's commands. A mistake on the command line itself (an option's value of the wrong
    type, an unknown option, a missing argument) is one line and exit status 1, as every other
    mistake, instead of a usage box and exit status 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:
            typer.echo(e.ctx.get_help())
            code = 0
        except ClickException as e:
            name = getattr(getattr(e, "ctx", None), "command_path", "resexp")
            err.print(
                f"[bold red]error:[/] {escape(e.format_message())} ({name} --help lists what it takes)", soft_wrap=True
            )
            code = FAILED
        except typer.Abort:
            code = signalled(2)
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code


app = typer.Typer(
    cls=Commands,
    add_completion=False,
    no_args_is_help=True,
    help="Reproduce the degradation problem of He et al. 2015: train plain and residual nets, compare their curves.",
)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Train a net, or sweep several with -m. OVERRIDES are Hydra overrides, e.g. model.depth=56 "
    "model.mode=plain model.shortcut=B data=cifar100 optim.lr=0.05 schedule.iterations=2000. Runs land in "
    "runs/<name>/<data>/<mode>-<depth><option>_s<seed>/; re-running a command resumes its run.",
)
def train(
    overrides: list[str] | None = typer.Argument(None, help="Hydra overrides (key=value, group=option)."),
    multirun: bool = typer.Option(False, "--multirun", "-m", help="Sweep: one run per combination of comma lists."),
    debug: bool = DEBUG,
) -> None:
    from resexp import distributed
    from resexp.errors import Aborted, Interrupted
    from resexp.launch.jobs import launch

    with quiet_unless_main(), boundary(debug, "interrupted before training started: nothing was written"):
        try:
            finished = launch(list(overrides or []), multirun, debug).complete
            distributed.close()
        except Aborted as e:
            if e.started:
                err.print(
                    f"aborted by a second {e}: no checkpoint since the last evaluation; run the same command "
                    "again to resume from it",
                    highlight=False,
                    soft_wrap=True,
                )
            else:
                err.print(
                    f"interrupted by {e} before training started: nothing was written", highlight=False, soft_wrap=True
                )
            raise typer.Exit(signalled(e.signum)) from None
        except Interrupted as e:
            distributed.close()  # every process stopped after the same iteration
            raise typer.Exit(signalled(e.signum)) from None  # the run said where its checkpoint is and how to resume
    if not finished:
        raise typer.Exit(FAILED)


@app.command(
    help="List the standard variants: CIFAR 20..1202 and ImageNet 18..152, plain and residual under each "
    "shortcut option, with parameters and multiply-adds per image."
)
def models(
    as_json: bool = typer.Option(False, "--json", help="Print the rows as a JSON list of objects."), debug: bool = DEBUG
) -> None:
    from resexp.commands.models import table
    from resexp.nets.costs import variant_rows

    with boundary(debug):
        rows = variant_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    Console().print(table(rows))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Measure training images/s of resexp's path and of a reference loop written the common way (fp32 "
    "eager, torchvision transforms on PIL images in DataLoader workers) on one device, and project one "
    "64k-iteration run and the 8-run Figure-6 sweep. OVERRIDES are those of `resexp train` (speed.*, device, "
    "data.batch_size, optim.*): the defaults are what `resexp train` uses on the device.",
)
def bench(
    overrides: list[str] | None = typer.Argument(None, help="e.g. speed.precision=fp32 device=cpu"),
    depths: str = typer.Option("20,56", help="Comma list of CIFAR depths (6n+2)."),
    modes: str = typer.Option("residual,plain", help="Comma list: residual, plain."),
    iterations: int | None = typer.Option(
        None, help="Timed iterations per net.", show_default="300 on CUDA, 10 on CPU"
    ),
    warmup: int | None = typer.Option(
        None, help="Untimed iterations first (the reference loop: at most 10).", show_default="50 on CUDA, 2 on CPU"
    ),
    reference_iterations: int | None = typer.Option(
        None, help="Timed iterations of the reference loop.", show_default="as --iterations"
    ),
    workers: int | None = typer.Option(None, help="Reference DataLoader workers.", show_default="min(8, cores)"),
    images: int = typer.Option(50_000, help="Size of the (random) training set."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time the reference loop."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
    debug: bool = DEBUG,
) -> None:
    from resexp.commands.bench import bench as measure
    from resexp.commands.bench import render

    progress = (
        (lambda text: None) if as_json else (lambda text: err.print(f"bench {text}", highlight=False, soft_wrap=True))
    )
    with boundary(debug):
        result = measure(
            list(overrides or []),
            depths,
            modes,
            iterations,
            warmup,
            reference_iterations,
            workers,
            images,
            reference,
            progress,
        )
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    wide_console(120).print(render(result))


@app.command(
    help="Draw the paper-style figure (Figures 1, 4, 6) from the runs under RUNS_DIR: error vs iterations, "
    "dashed = training, bold = test, plain left, residual right. Writes PNG and SVG."
)
def plot(
    runs_dir: Path = typer.Argument(..., help="A sweep folder (e.g. runs/cifar_quick) or any folder of runs."),
    out: Path | None = typer.Option(None, "--out", help="Output path without suffix.", show_default="RUNS_DIR/curves"),
    debug: bool = DEBUG,
) -> None:
    from resexp.commands.plot import plot_folder

    with boundary(debug):
        paths = plot_folder(runs_dir, out, note)
    for path in paths:
        typer.echo(str(path))


@app.command(
    help="Take a run's trained weights out of resexp: its latest checkpoint's net, as --to state_dict (resexp's "
    "names, with the fields that build the net: torch.hub.load(..., 'resexp_net', weights=OUT) loads it) or "
    "--to torchvision (torchvision's names, for ImageNet ResNet-18/34 with option B, which "
    "torchvision.models.resnet18/34 load as they are)."
)
def export(
    run: Path = typer.Argument(..., help="A run folder (e.g. runs/default/cifar10/residual-20A_s0)."),
    out: Path = typer.Argument(..., help="The file to write (e.g. resnet20.pt)."),
    to: str = typer.Option("state_dict", "--to", help="state_dict or torchvision."),
    debug: bool = DEBUG,
) -> None:
    from resexp.commands.export import export as write
    from resexp.errors import UserError

    with boundary(debug):
        if not run.is_dir():
            raise UserError(f"{run} is not a run folder")
        what = write(run, to, out, note)
    typer.echo(f"{out}: {what}")


@app.command(
    name="import",
    help="Make a run folder of a published net, so that eval, analyze, report and export read it like a run "
    "trained here (resexp train does not continue it). SOURCE: akamaster (the CIFAR-10 ResNets of "
    "akamaster/pytorch_resnet_cifar10: their option A pads on both sides, the import reorders channels so the net "
    "computes the same function; inputs normalised with ImageNet's mean and std, data.normalize=imagenet) or "
    "torchvision (resnet18/34 state_dicts; the 50/101/152 v1.5 bottlenecks are refused).",
)
def import_(
    source: str = typer.Argument(..., help="akamaster or torchvision."),
    file: Path = typer.Argument(..., help="The published file, e.g. resnet56-4bfd9763.th or resnet18-f37072fd.pth."),
    name: str | None = typer.Option(None, "--name", help="The folder under runs/.", show_default="SOURCE"),
    data_root: str | None = typer.Option(
        None, "--data-root", help="Where the data to evaluate it on is (data.root in its config.yaml)."
    ),
    debug: bool = DEBUG,
) -> None:
    from resexp.commands.import_ import import_run

    with boundary(debug):
        done = import_run(source, file, name, data_root)
    word = "already imported (the same file)" if done.existed else "imported"
    typer.echo(f"{done.path}: {done.net}, {word}")


@app.command(
    name="eval",
    help="Evaluate the trained net of each run under FOLDER on its test set (and val, when it has one), with the "
    "paper's test-time protocols as overrides: data.ten_crop=true (Tables 2-3), data.test_scales=[224,256,384,480,"
    "640] (Tables 4-5); and data.root=, data.eval_batch_size=, data.workers=, device=. Prints a row per run and per "
    "net (mean ± std over seeds), writes RUN/eval/<latest|best>[+options].json, never touches a training file; "
    "report shows the numbers.",
)
def eval_(
    folder: Path = typer.Argument(..., help="A run folder or a folder of runs (e.g. runs/akamaster)."),
    overrides: list[str] | None = typer.Argument(None, help="Test-time options, e.g. data.ten_crop=true."),
    best: bool = typer.Option(False, "--best", help="best.pt (lowest val or test error) instead of the latest."),
    debug: bool = DEBUG,
) -> None:
    from resexp.commands.eval import evaluate_folder, table

    with boundary(debug):
        done = evaluate_folder(folder, list(overrides or []), best, note)
    columns, per_run, per_net = table(done)
    console = wide_console(120)
    console.print(rich_table(f"eval: {folder}", columns, per_run))
    console.print(rich_table("per net (mean ± std over seeds)", columns, per_net))
    for e in done:
        typer.echo(str(e.path))


@app.command(
    help="Tabulate the runs under RUNS_DIR: one row per experiment (every field that changes a result but the seed), "
    "mean ± std over its seeds, beside the paper's numbers, with a verdict on the degradation problem. Works on "
    "unfinished sweeps. --format html writes RUNS_DIR/report.html: one self-contained page with the curves, the "
    "table and every analysis run on the folder."
)
def report(
    runs_dir: Path = typer.Argument(..., help="A sweep folder (e.g. runs/cifar_quick) or any folder of runs."),
    form: str = typer.Option("markdown", "--format", help="markdown, csv, json or html."),
    debug: bool = DEBUG,
) -> None:
    from resexp.commands.report import FORMATS, render
    from resexp.commands.report_html import write
    from resexp.errors import UserError
    from resexp.rundir.read import readable_runs

    with boundary(debug):
        if form not in FORMATS:
            raise UserError(f"--format {form} is unknown: use {', '.join(FORMATS)}")
        if form != "html":
            typer.echo(render(readable_runs(runs_dir, note), form, note), nl=False)
            return
        path = write(runs_dir, note)
    typer.echo(str(path))


@app.command(
    help="Why residual learning works, measured on the runs under FOLDER (a run or a folder of runs), or at "
    "initialisation on the nets of a config (--at-init OVERRIDES). KIND: responses (He et al. Fig. 7: std of each 3x3 "
    "layer's response), gradients (gradient norms by layer, at initialisation and at the checkpoint), lesion (Veit et "
    "al. 2016: test error with blocks removed), landscape (Li et al. 2018: loss around the weights along "
    "filter-normalised directions), signal (the stream's scale, each block's distance from the identity and the "
    "gradient, through the net). Writes FOLDER/analysis/KIND.png, .svg and .json (+option-value after KIND for "
    "each option away from its default: one analysis never replaces another with other options), and prints a "
    "table and verdicts: "
    "each claim agrees, does not agree, or cannot decide."
)
def analyze(
    kind: str = typer.Argument(..., help="responses, gradients, lesion, landscape, signal or paths."),
    targets: list[str] = typer.Argument(
        ...,
        help="A run folder or a folder of runs (e.g. runs/cifar_quick); or, with --at-init, the overrides of a config "
        "or a sweep (e.g. +experiment=why_init data.root=../shared/data): no training needed.",
    ),
    at_init: bool = typer.Option(False, "--at-init", help="Analyse freshly initialised nets of the same configs."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    data_root: str | None = typer.Option(
        None, help="Where the runs' data is, when not at the data.root their config.yaml names."
    ),
    images: int | None = typer.Option(
        None,
        help="Images per evaluation (at most what the data has): responses and lesion: test images; gradients: the "
        "training batch; landscape: training images.",
        show_default="responses, lesion: the whole test set; gradients: the run's batch; landscape: 512",
    ),
    draws: int = typer.Option(3, help="lesion: random draws per number of removed blocks (1 to 100)."),
    samples: int = typer.Option(
        16, help="paths: paths sampled per length, every one where there are fewer (1 to 1000)."
    ),
    grid: int = typer.Option(21, help="landscape: points per axis of the 2D grid (2 to 101)."),
    span: float = typer.Option(1.0, help="landscape: the grid covers [-span, span] along each direction."),
    workers: int = typer.Option(1, help="landscape: processes computing chunks side by side (CPU; at most the cores)."),
    nets: str = typer.Option(
        "", help="Only these nets, by the names report shows, e.g. ResNet-56,plain-56.", show_default="all"
    ),
    seeds: str = typer.Option("", help="Only runs of these seeds, e.g. 0 or 0,1.", show_default="all"),
    per_channel: bool = typer.Option(
        False, "--per-channel", help="responses: the std per channel, averaged (default: over all of a layer's values)."
    ),
    debug: bool = DEBUG,
) -> None:

    from resexp.analysis.protocol import Options
    from resexp.commands.analyze import analyze as run

    kept = "; its finished chunks are kept and the same command goes on from them" if kind == "landscape" else ""
    with boundary(debug, f"interrupted: nothing of this analysis was written{kept}"):
        configs = None if len(targets) == 1 and "=" not in targets[0] else targets
        folder = Path(targets[0]) if configs is None else None
        try:
            seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
        except ValueError:
            raise OptionError(f"--seeds {seeds} must be a comma list of integers, e.g. 0,1") from None
        net_list = tuple(n.strip() for n in nets.split(",") if n.strip())
        options = Options(at_init, images, draws, grid, span, workers, 0, net_list, seed_list, per_channel, samples)
        result, paths = run(kind, folder, configs, options, device, data_root, note, note)
    title = f"{kind}{' at initialisation' if at_init else ''}: {folder or ' '.join(targets)}"
    console = wide_console(140)
    console.print(rich_table(title, result.columns, result.rows))
    for verdict in result.verdicts:
        console.print(f"- {verdict}", highlight=False, soft_wrap=True, markup=False)
    for path in paths:
        typer.echo(str(path))
