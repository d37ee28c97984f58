"""The driver of every analysis: `analyze` takes the nets (resexp.analysis.subjects), runs one kind on
them, names the verdicts' missing runs, and writes FOLDER/analysis/STEM.json, .png and .svg;
`stored` finds them again for the report."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from resexp import identity
from resexp.analysis.protocol import Options, Result
from resexp.analysis.subjects import Subject, from_configs, subjects
from resexp.analysis.verdict import with_diverged
from resexp.errors import UserError
from resexp.rundir.experiments import jsonable
from resexp.rundir.folder import atomic_write

KINDS = ("responses", "gradients", "lesion", "landscape", "signal", "paths")


# The options each kind reads (besides --at-init): an analysis's file name says those that differ
# from their defaults, so that analyses that can differ never share a file.
READS = {
    "responses": ("images", "per_channel", "nets", "seeds"),
    "gradients": ("images", "nets", "seeds"),
    "lesion": ("draws", "images", "seed", "nets", "seeds"),
    "landscape": ("grid", "span", "images", "seed", "nets", "seeds"),
    "signal": ("images", "nets", "seeds"),
    "paths": ("images", "samples", "seed", "nets", "seeds"),
}


STATES = ("", "-init", "-config")  # at the checkpoint, --at-init on runs, --at-init from a config


GROUPS = ("model", "data", "schedule")  # config groups whose choice changes the nets (experiment names the folder)


def state(kind: str, options: Options, configs: list[str] | None = None) -> str:
    """KIND, KIND-init or KIND-config: the weights analysed, without the options."""
    return kind + ("-config" if configs is not None else "-init" if options.at_init else "")


def file_stem(kind: str, options: Options, configs: list[str] | None = None) -> str:
    """An analysis's file name, without its suffix: its state, then `+key-value` for each option the
    kind reads that differs from its default and, from a config, each override typed that bears on
    the nets (not +experiment, which names the folder, nor where the data is): `lesion+nets-ResNet-56+seeds-0`,
    `signal-config+mode-residual+init-zero_gamma`. The same command again replaces its own files."""
    default = Options()
    items: list[tuple[str, str | None]] = []
    for key in READS[kind]:
        value = getattr(options, key)
        if value != getattr(default, key):
            items.append((key, ",".join(map(str, value)) if isinstance(value, tuple) else identity.shown(value)))
    items += typed(configs or [])
    return identity.tagged(state(kind, options, configs), items)


def files(folder: Path, kind: str, options: Options, configs: list[str] | None = None) -> list[Path]:
    """An analysis's numbers (.json) and figures (.png, .svg) under `folder`: its stem with each
    suffix added (a stem may hold a '.', as in span-0.5, which a suffix never replaces)."""
    name = file_stem(kind, options, configs)
    return [folder / f"{name}{suffix}" for suffix in (".json", ".png", ".svg")]


def typed(overrides: list[str]) -> list[tuple[str, str]]:
    """`key-value` for each override of a config that bears on its nets, sorted (the order typed
    does not matter): identity fields by their short names, group choices (model=imagenet) by the group's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    short = identity.short_names()
    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        value = override.input_line.partition("=")[2]
        if key in short:
            out.append((short[key], value))
        elif key in GROUPS:
            out.append((key, value))
    return sorted(out)


@dataclass(frozen=True)
class Stored:
    """One analysis written under FOLDER/analysis: its numbers (STEM.json) and figure (STEM.png)."""

    kind: str
    at_init: bool
    numbers: Path
    figure: Path

    @property
    def title(self) -> str:
        """lesion, signal at initialisation (from the config), landscape (span 0.5, nets plain-56)."""
        name = self.numbers.stem
        head, _, tag = name.partition(identity.ITEM)
        where = {"": "", "-init": " at initialisation", "-config": " at initialisation (from the config)"}
        title = self.kind + where[head[len(self.kind) :]]
        items = [item.replace(identity.VALUE, " ", 1) for item in tag.split(identity.ITEM)] if tag else []
        for char, code in reversed(identity.ESCAPED.items()):
            items = [item.replace(code, char) for item in items]
        return title + (f" ({', '.join(items)})" if items else "")


def stored(folder: Path) -> list[Stored]:
    """The analyses written under `folder`, in the order of KINDS (at the checkpoint, then --at-init
    on the runs, then from a config; each first without options, then by name): where they are is
    this package's business, not its readers'."""
    out = []
    analysis = folder / "analysis"
    for kind in KINDS:
        for suffix in STATES:
            head = kind + suffix
            found = [analysis / f"{head}.json"] + sorted(analysis.glob(f"{head}{identity.ITEM}*.json"))
            for numbers in found:
                if numbers.exists() and numbers.with_suffix(".png").exists():
                    out.append(Stored(kind, bool(suffix), numbers, numbers.with_suffix(".png")))
    return out


def measured(kind: str, nets: list[Subject], options: Options, base: Path, progress: Callable[[str], None]) -> Result:
    """One kind (resexp.analysis.protocol) on `nets`: its records, table, verdicts and figure."""
    module = importlib.import_module(f"resexp.analysis.{kind}")
    records = [record for net in nets for record in module.measure(net, options, base, progress)]
    return Result(
        kind, records, module.COLUMNS, module.rows(records), module.verdicts(records), module.figure(nets, records)
    )


def analyze(
    kind: str,
    folder: Path | None,
    options: Options,
    device: torch.device,
    data_root: str | None,
    warn: Callable[[str], None],
    progress: Callable[[str], None],
    configs: list[str] | None = None,
) -> tuple[Result, list[Path]]:
    """Run one analysis on the runs under `folder`, or (at initialisation) on the nets of
    `configs`, the overrides of a config or a sweep (written under its runs/<name>/); returns its
    result and the files written."""
    if kind not in KINDS:
        raise UserError(f"{kind!r} is not an analysis: choose one of {', '.join(KINDS)}")
    diverged: list[dict] = []  # the runs left out because they diverged in training
    if configs is not None:
        nets, folder = from_configs(configs, device)
    else:
        assert folder is not None
        nets = subjects(folder, options.at_init, device, data_root, warn, options.nets, options.seeds, diverged)
    out = folder / "analysis"  # made when there is something to write: an interrupted analysis leaves nothing
    started = time.perf_counter()
    result = measured(kind, nets, options, out / state(kind, options, configs), progress)
    result.verdicts = with_diverged(result.verdicts, diverged)
    seconds = time.perf_counter() - started
    document = {
        "kind": kind,
        "options": asdict(options),
        "configs": configs,  # the overrides of the config analysed (None: a folder of runs)
        "device": str(device),
        "seconds": round(seconds, 1),
        "verdicts": [asdict(v) for v in result.verdicts],
        "records": result.records,
    }
    numbers, *figures = paths = files(out, kind, options, configs)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(numbers, json.dumps(jsonable(document), indent=1) + "\n")
    for path in figures:
        result.figure.savefig(path, dpi=130, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(result.figure)
    return result, paths
