"""`resexp eval FOLDER [OVERRIDES]`: the test error of each run's trained net under FOLDER, with
the test-time protocols of the paper as options, without retraining and without touching a
training file (a net's loss and error over an evaluation set is resexp.run.evaluate's, as in the
training loop; a run is opened through resexp.rundir.trained).

For each run (trained here, or made by `resexp import`) it loads the latest checkpoint (or best.pt:
`--best`), rebuilds the run's data, and evaluates the net on every evaluation set the run has (test,
and val when it holds one out). Overrides may change only how the test is made and where things are:

    data.ten_crop=true                      10-crop testing (Tables 2-3): 4 corners + centre, and flips
    data.test_scales=[224,256,384,480,640]  the fully-convolutional multi-scale test (Tables 4-5)
    data.root=...                           the data moved (its fingerprint must still match)
    data.eval_batch_size=..., data.workers=..., device=...

The numbers go to RUN/eval/<which>[+option-value...].json (`latest.json`, `latest+ten_crop.json`,
`best+test_scales-224_256.json`): one file per protocol, so one never replaces another, and
`report` shows each beside the curves' numbers. Each file counts the views the net saw per image.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from resexp import identity
from resexp.commands.export import check_identity
from resexp.errors import ConfigError, UserError
from resexp.run.evaluate import evaluate
from resexp.run.speed import EAGER
from resexp.rundir.folder import EVALS, atomic_write
from resexp.rundir.read import Run, readable_runs
from resexp.rundir.trained import each_run, first_of, open_run

# Overrides that change the numbers (named in the file) and those that only say where and how fast.
PROTOCOL = ("data.ten_crop", "data.test_scales")


WHERE = ("data.root", "data.eval_batch_size", "data.workers", "device")


Warn = Callable[[str], None]


@dataclass
class Evaluated:
    run: Run
    record: dict[str, Any]
    path: Path


def parse(overrides: list[str]) -> dict[str, Any]:
    """KEY=VALUE overrides as values (YAML, as Hydra reads them); any other key is refused."""
    out = {}
    for line in overrides:
        key, eq, text = line.partition("=")
        if not eq or key.startswith(("+", "~")):
            raise ConfigError(f"{line}: eval takes KEY=VALUE overrides of {', '.join(PROTOCOL + WHERE)}")
        if key not in PROTOCOL + WHERE:
            raise ConfigError(
                f"{key} is not a test-time option: eval evaluates a run as it was trained, and may change only "
                f"{', '.join(PROTOCOL + WHERE)}"
            )
        try:  # as Hydra reads a value: true, 3, [224,256]; a path or a device stays the text it is
            out[key] = text if key in ("data.root", "device") else yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            raise ConfigError(f"{line}: {text} is not a value (e.g. true, 500, [224,256])") from None
    return out


def file_stem(which: str, options: dict[str, Any]) -> str:
    """The file name of an evaluation: the weights, then each protocol option away from its default."""
    items: list[tuple[str, str | None]] = []
    for key in PROTOCOL:
        value = options.get(key)
        if value not in (None, False, []):
            items.append((key.split(".")[-1], None if value is True else identity.shown(value)))
    return identity.tagged(which, items)


class ViewCounter:
    """Counts the images the net is run on (a forward pre-hook): views per test image."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.images = 0
        self.handle = model.register_forward_pre_hook(self.count)

    def count(self, module: torch.nn.Module, args: tuple) -> None:
        self.images += int(args[0].shape[0])


def evaluate_run(run: Run, which: str, options: dict[str, Any], warn: Warn) -> Evaluated:
    """Evaluate one run's net and write RUN/eval/<stem>.json; nothing of the run is changed."""
    started = time.perf_counter()
    missing = "has no checkpoint to evaluate (it has not trained yet)"
    opened = open_run(run, None, warn, options, which, "evaluating", "data.root", missing)  # device= is an option
    check_identity(opened.trained, run.identity, run.path)
    cfg, model, trained = opened.cfg, opened.model, opened.trained
    # the test as made: the run's own protocol (a run may have trained with data.ten_crop=true) with the overrides
    protocol = {"data.ten_crop": cfg.data.ten_crop, "data.test_scales": cfg.data.test_scales}
    counter = ViewCounter(model)
    numbers: dict[str, float] = {}
    images = 0
    for name, batches in opened.data.evals.items():
        numbers.update(evaluate(model, batches, name, EAGER))
        images += len(batches)
    counter.handle.remove()
    record = {
        "net": run.label,
        "seed": run.seed,
        "run": str(run.path),
        "which": which,
        "checkpoint": {"file": trained.file.name, "step": trained.step, "sha256": trained.sha256},
        "options": protocol,
        **numbers,
        "images": images,
        "views_per_image": counter.images / images if images else 0,
        "seconds": round(time.perf_counter() - started, 2),
        "device": str(next(model.parameters()).device),
        "data": opened.data_source.identity(),
    }
    folder = run.path / EVALS
    folder.mkdir(exist_ok=True)
    path = folder / f"{file_stem(which, protocol)}.json"
    atomic_write(path, json.dumps(record, indent=1) + "\n")
    return Evaluated(run, record, path)


def evaluate_folder(folder: Path, overrides: list[str], best: bool, warn: Warn) -> list[Evaluated]:
    """Every run under FOLDER with weights, evaluated; a run that cannot be is named and skipped,
    and when none can, that is the one line of the error."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    options = parse(overrides)
    which = "best" if best else "latest"
    runs = readable_runs(folder, warn)

    def nothing(skipped: list[str]) -> str:
        return f"no run under {folder} can be evaluated: {first_of(skipped)}"

    return each_run(runs, lambda run: evaluate_run(run, which, options, warn), warn, nothing)


def table(done: list[Evaluated]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Columns, a row per run, and a row per net (mean ± std over its seeds, as report groups runs)."""
    from resexp.commands.report import fmt
    from resexp.rundir.experiments import experiments, mean_std, settings_of

    keys = [k for k in ("test/error", "val/error") if any(k in e.record for e in done)]
    columns = ["net", "settings", "seeds", "weights"] + [f"{k.split('/')[0]} error" for k in keys] + ["views/image"]
    groups = experiments([e.run for e in done])
    settings = settings_of(groups)
    by_path = {e.run.path: e for e in done}
    per_run, per_net = [], []
    for key, members in groups.items():
        mine = [by_path[r.path] for r in members]
        for e in mine:
            c = e.record["checkpoint"]
            per_run.append(
                [e.run.label, settings[key], str(e.run.seed), f"{c['file']} ({c['step']})"]
                + [f"{e.record[k]:.2f}" if k in e.record else "-" for k in keys]
                + [f"{e.record['views_per_image']:g}"]
            )
        per_net.append(
            [mine[0].run.label, settings[key], " ".join(str(e.run.seed) for e in mine), mine[0].record["which"]]
            + [fmt(mean_std([e.record[k] for e in mine if k in e.record])) for k in keys]
            + [f"{mine[0].record['views_per_image']:g}"]
        )
    return columns, per_run, per_net
