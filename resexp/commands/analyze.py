"""`resexp analyze KIND FOLDER | --at-init OVERRIDES`: the targets and options checked, then the
analysis run by resexp.analysis.driver (which writes FOLDER/analysis/STEM.json, .png, .svg)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from resexp.analysis.driver import KINDS
from resexp.analysis.driver import analyze as run
from resexp.analysis.protocol import Options, Result
from resexp.device import pick_device
from resexp.errors import UserError


def analyze(
    kind: str,
    folder: Path | None,
    configs: list[str] | None,
    options: Options,
    device: str,
    data_root: str | None,
    warn: Callable[[str], None],
    progress: Callable[[str], None],
    spelled: tuple[str, str] = ("add --at-init", "--device"),
) -> tuple[Result, list[Path]]:
    """A folder of runs, or (with options.at_init) the overrides of a config; the result
    and the files written. UserError names a kind, a target or an option that cannot be analysed;
    `spelled`: how the caller's user asks for --at-init and names --device (the CLI's, the API's)."""
    if kind not in KINDS:
        raise UserError(f"{kind!r} is not an analysis: choose one of {', '.join(KINDS)}")
    if configs is not None and not options.at_init:
        raise UserError(f"{' '.join(configs)}: a config has no trained weights: {spelled[0]}, or give a folder of runs")
    if folder is not None and not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    options.check()
    return run(kind, folder, options, pick_device(device, spelled[1]), data_root, warn, progress, configs)
