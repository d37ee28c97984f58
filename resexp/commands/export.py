"""`resexp export RUN OUT --to state_dict|torchvision`: a run's trained net as a file other code
loads: resexp's names with the fields that build the net, or torchvision's names (ImageNet
ResNet-18/34, option B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resexp import identity
from resexp.errors import UserError
from resexp.rundir.weights import (
    FORMAT_TAG,
    FORMATS,
    Trained,
    classes_of,
    fields_of,
    of_run,
    torchvision_names,
    why_not_torchvision,
)


def export(run_path: Path, to: str, out: Path, warn) -> str:
    """Write RUN's latest checkpoint's weights to OUT in the format `to`; returns what was written."""
    from resexp.rundir.folder import atomic_write, outside_runs
    from resexp.rundir.read import load_run

    if to not in FORMATS:
        raise UserError(f"--to {to} is not a format: choose one of {', '.join(FORMATS)}")
    outside_runs(out, "the export")
    if out.is_dir():
        raise UserError(f"{out} is a folder: name the file to write, e.g. {out / 'net.pt'}")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent} does not exist: make it, or write {out.name} elsewhere")
    run = load_run(run_path, warn)  # a folder that is not a run, or whose files disagree, is one line
    trained = of_run(run_path, warn, doing="exporting")
    if trained is None:
        raise UserError(f"{run_path} has no checkpoint to export (it has not trained yet)")
    check_identity(trained, run.identity, run_path)
    state = dict(trained.model)
    fields = fields_of(run.identity)
    if to == "torchvision":
        reason = why_not_torchvision(fields)
        if reason:
            raise UserError(f"--to torchvision: {reason}")
        payload: dict[str, Any] = torchvision_names(state)
    else:
        payload = {
            "format": FORMAT_TAG,
            "model": state,
            "fields": fields,
            "num_classes": classes_of(state),
            "source": {
                "run": str(run_path),
                "file": trained.file.name,
                "step": trained.step,
                "sha256": trained.sha256,
                **({"imported": run.provenance} if run.imported else {}),
            },
        }
    atomic_write(out, lambda f: torch.save(payload, f))
    return f"{run.label} s{run.identity['seed']} at iteration {trained.step} ({to})"


def check_identity(trained: Trained, values: dict[str, Any], run_path: Path) -> None:
    """The checkpoint was trained as the run's config.yaml says (checkpoints that say)."""
    if trained.identity is not None:
        wrong = identity.differences(identity.of(trained.identity), values)
        if wrong:
            raise UserError(
                f"{trained.file} was trained with another config than {run_path}/config.yaml says: {wrong[0]}"
            )
