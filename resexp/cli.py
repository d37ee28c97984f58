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
from typing import List, Optional

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


def hydra_task(cfg) -> Optional[float]:
    """One run, called by Hydra with the composed config; returns the final test error."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from resexp.checkpoint import CheckpointError
    from resexp.config import ConfigError, to_object
    from resexp.data import DataError
    from resexp.train import Diverged, run

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        metrics = run(to_object(cfg), run_dir, console=err)
    except (ConfigError, DataError, CheckpointError, Diverged, OSError) as e:
        remove_empty(run_dir, levels=3)
        if os.environ.get("RESEXP_DEBUG"):
            raise
        kind = "diverged" if isinstance(e, Diverged) else "error"
        err.print(f"[bold red]{kind}:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise (RunAborted if hydra_cfg.mode == RunMode.RUN else RunFailed)(str(e)) from None
    return metrics.get("test/error")


def remove_empty(run_dir: Path, levels: int) -> None:
    """Hydra makes the run directory (and its parents) before the run starts; drop them again if
    nothing was written, so a failed start leaves nothing that plot or report would take for a run."""
    for path in [run_dir, *run_dir.parents][:levels]:
        try:
            path.rmdir()
        except OSError:
            return


def one_line(e: BaseException) -> str:
    """Hydra/OmegaConf errors as one line: the message and its cause, without the key dump."""
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
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides (key=value, group=option)."),
    multirun: bool = typer.Option(False, "--multirun", "-m", help="Sweep: one run per combination of comma lists."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    import hydra

    from resexp.config import CONFIG_DIR, register, register_resolvers

    register()
    register_resolvers()
    if debug:
        os.environ["RESEXP_DEBUG"] = "1"
    full_error = debug or bool(os.environ.get("HYDRA_FULL_ERROR"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us; we decide how much to show
    main = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(hydra_task)
    argv = sys.argv
    sys.argv = ["resexp train"] + (["--multirun"] if multirun else []) + list(overrides or [])
    try:
        main()
    except (RunFailed, RunAborted):
        raise typer.Exit(1)
    except Exception as e:
        if full_error:
            raise
        err.print(f"[bold red]error:[/] {escape(one_line(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    finally:
        sys.argv = argv


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


if __name__ == "__main__":
    app()
