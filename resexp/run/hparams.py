"""What TensorBoard's HParams tab shows.

Each run declares its hyperparameters (a session start): every field of its identity, each under
a name whose number fixes its place, `00 mode`, `01 depth`, `02 shortcut`, `03 seed`, then the
others in the schema's order, and last the run's short name (`plain-20 s0`, `ResNet-56 s1
lr-0.05`) under the highest number. A sweep declares the experiment (its hparams and metrics) in
its folder, `runs/<name>/`, which TensorBoard reads before any run's: mode, depth, shortcut and
seed marked as differing, each field the runs of that folder actually vary, and the run's name,
with the final and best test and training errors as its metrics. TensorBoard orders the differing
ones first, by name, and ticks the first five: mode, depth, shortcut, seed and the first field the
sweep varies (lr, say), or the run's name where the sweep varies nothing else. The rest are a tick
away in its side panel. A later sweep into the same folder writes the experiment anew over every
run there.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from resexp import identity

FRONT = ("model.mode", "model.depth", "model.shortcut", "seed")  # always ticked


LAST = "run"  # the short name: after every field, ticked only where the sweep varies no other field


METRICS = ("final/test_error", "final/train_error", "best/test_error", "best/train_error")


SUFFIX = ".resexp-hparams"  # the experiment's event file in a sweep's folder


@functools.cache
def columns() -> tuple[str, ...]:
    """Every hparam, in the order the table shows them."""
    return (*FRONT, *(k for k in identity.identity_keys() if k not in FRONT), LAST)


@functools.cache
def names() -> dict[str, tuple[str, str]]:
    """{key: (name, display name)}: the name's number orders the columns (TensorBoard sorts by it)."""
    short = identity.short_names()
    return {k: (f"{i:02d} {short.get(k, k)}", short.get(k, k)) for i, k in enumerate(columns())}


def value(v: Any) -> str | float | bool:
    """A value as the HParams plugin takes it: numbers, booleans and strings."""
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return identity.shown(v)


def short_name(values: dict[str, Any], folder: str) -> str:
    """The run's name for the table: plain-20 s0, ResNet-56 s1 lr-0.05."""
    mode, depth = values["model.mode"], values["model.depth"]
    option = values.get("model.shortcut") or "A"
    label = f"plain-{depth}" if mode == "plain" else f"ResNet-{depth}" + ("" if option == "A" else option)
    _, _, settings = folder.partition(identity.ITEM)
    return f"{label} s{values['seed']}" + (f" {settings}" if settings else "")


def session(values: dict[str, Any], folder: str) -> list:
    """The summaries of one run's hyperparameters (session start and end), for its event file."""
    from torch.utils.tensorboard.summary import hparams as summaries

    shown = {**values, "run": short_name(values, folder)}
    if shown["model.mode"] == "plain":
        shown["model.shortcut"] = "-"  # a plain net has no shortcut option
    hparams = {names()[k][0]: value(shown.get(k)) for k in columns()}
    _, start, end = summaries(hparams, {m: 0.0 for m in METRICS})
    return [start, end]


def experiment(runs: list[dict[str, Any]]) -> Any:
    """The experiment summary of a folder of runs (their identities): the front columns and the
    fields that vary marked as differing (TensorBoard shows five of them first)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName
    from tensorboard.plugins.hparams.metadata import EXPERIMENT_TAG, create_summary_metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    infos = []
    for key in columns():
        seen = {identity.shown(r.get(key)) for r in runs}
        kinds = {type(value(r.get(key))) for r in runs} if key != "run" else {str}
        kind = {float: DataType.DATA_TYPE_FLOAT64, bool: DataType.DATA_TYPE_BOOL}.get(
            kinds.pop(), DataType.DATA_TYPE_STRING
        )
        kind = kind if not kinds else DataType.DATA_TYPE_STRING  # values of more than one type
        name, shown = names()[key]
        differs = key in FRONT or key == LAST or len(seen) > 1
        infos.append(HParamInfo(name=name, display_name=shown, type=kind, differs=differs))
    metrics = [MetricInfo(name=MetricName(tag=m), display_name=m.replace("/", " ").replace("_", " ")) for m in METRICS]
    metadata = create_summary_metadata(
        HParamsPluginData(experiment=Experiment(hparam_infos=infos, metric_infos=metrics))
    )
    return Summary(value=[Summary.Value(tag=EXPERIMENT_TAG, metadata=metadata)])


def write_experiment(folder: Path, runs: list[dict[str, Any]]) -> None:
    """The experiment of `folder` (a sweep's), written anew over every run there."""
    from torch.utils.tensorboard import SummaryWriter

    for old in folder.glob(f"events.out.tfevents.*{SUFFIX}"):
        old.unlink()
    writer = SummaryWriter(str(folder), filename_suffix=SUFFIX)
    try:
        writer.file_writer.add_summary(experiment(runs))
    finally:
        writer.close()
