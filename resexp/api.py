"""resexp from Python (a notebook, a script): the commands as functions. Each does what its
command does, with the same checks, and raises what the command would print as one line
(resexp.errors.UserError and its kinds; never sys.exit). Warnings go to stderr as the CLI's do.

    from resexp import api
    folders = api.train("+experiment=cifar_quick", "data.root=../shared/data", multirun=True)
    print(api.report("runs/cifar_quick"))
    api.plot("runs/cifar_quick")
    result = api.analyze("signal", "runs/cifar_quick")
    for verdict in result.verdicts: print(verdict)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resexp.errors import Interrupted, UserError


def warn(text: str) -> None:
    print(text, file=sys.stderr)


class RunsFailed(UserError):
    """Some runs of a `train` call did not finish (each said why as it stopped)."""

    def __init__(self, unfinished: list[Path]) -> None:
        self.unfinished = unfinished
        shown = ", ".join(map(str, unfinished[:5])) + (" ..." if len(unfinished) > 5 else "")
        super().__init__(f"{len(unfinished)} run(s) did not finish: {shown} (each said why above)")


def train(*overrides: str, multirun: bool = False) -> list[Path]:
    """`resexp train [-m] OVERRIDES`: train (or resume) every run of the config or sweep; the run
    folders. Raises UserError for a mistake (nothing trained) and RunsFailed when a run did not
    finish; an interrupt (the notebook's stop button) saves a checkpoint and raises
    KeyboardInterrupt, and the same call again resumes."""
    from resexp import distributed
    from resexp.launch.jobs import launch

    try:
        done = launch(list(overrides), multirun, debug=False)
        distributed.close()
    except Interrupted as e:
        raise KeyboardInterrupt(str(e)) from None
    if not done.complete:
        raise RunsFailed(done.unfinished)
    return done.runs


def runs(folder: str | Path, on_warning: Callable[[str], None] = warn) -> list[Any]:
    """The runs under `folder` (resexp.rundir.read.Run: identity, metrics rows, status), read and checked
    as every command reads them; a run that cannot be read is named in a warning and left out."""
    from resexp.rundir.read import readable_runs

    return readable_runs(Path(folder), on_warning)


def report(folder: str | Path, form: str = "markdown") -> str:
    """`resexp report FOLDER --format markdown|csv|json`: the table and the verdicts, as text."""
    from resexp.commands.report import FORMATS, render

    if form not in FORMATS or form == "html":
        raise UserError(f"form={form!r} is not a text format: use markdown, csv or json (or api.html)")
    return render(runs(folder), form, warn)


def html(folder: str | Path) -> Path:
    """`resexp report FOLDER --format html`: FOLDER/report.html, one self-contained page."""
    from resexp.commands.report_html import write

    return write(Path(folder), warn)


def plot(folder: str | Path, out: str | Path | None = None) -> list[Path]:
    """`resexp plot FOLDER [--out OUT]`: the paper-style figure; the files written (PNG, SVG)."""
    from resexp.commands.plot import plot_folder

    return plot_folder(Path(folder), None if out is None else Path(out), warn)


@dataclass
class Analysis:
    """An analysis's result: its table, its verdicts, its figure's files and its numbers' file."""

    kind: str
    columns: list[str]
    rows: list[list[str]]
    verdicts: list[Any]  # resexp.analysis.verdict.Verdict
    records: list[dict[str, Any]] = field(repr=False)
    files: list[Path] = field(default_factory=list)


def analyze(
    kind: str,
    target: str | Path | list[str],
    at_init: bool = False,
    device: str = "auto",
    data_root: str | None = None,
    **options: Any,
) -> Analysis:
    """`resexp analyze KIND TARGET [--at-init] [--OPTION VALUE ...]`: TARGET is a folder of runs, or
    (with at_init=True) the overrides of a config as a list; options as the CLI's, by their Python
    names (images=64, draws=3, samples=16, grid=21, span=1.0, workers=1, nets=("ResNet-56",),
    seeds=(0,), per_channel=True)."""
    from resexp.analysis.protocol import Options
    from resexp.commands.analyze import analyze as run

    unknown = sorted(set(options) - set(Options.__dataclass_fields__) - {"at_init"})
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not an option of api.analyze")
    values = Options(at_init=at_init, **options)
    values.nets, values.seeds = tuple(values.nets), tuple(values.seeds)
    configs = [str(t) for t in target] if isinstance(target, (list, tuple)) else None
    folder = None if configs is not None else Path(target)
    result, files = run(kind, folder, configs, values, device, data_root, warn, warn, ("pass at_init=True", "device"))
    return Analysis(result.kind, result.columns, result.rows, result.verdicts, result.records, files)
