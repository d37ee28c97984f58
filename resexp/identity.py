"""A run's identity: the config fields that change its result, and the folder name that shows them.

Every field of the schema (resexp/config.py) is part of a run's identity unless it is declared a
setting (`config.setting`: where the data lies, the device, speed switches, logging, ...). Two runs
with the same identity and the same data compute the same numbers, so they are one run.

The folder of a run is `<data>/<mode>-<depth><option>_s<seed>` followed by every other identity
field whose value differs from the preset's (the config composed from the same preset and group
choices, without the command's value overrides), as Hydra's override dirname does:

    cifar10/residual-20A_s0                      the preset's values
    cifar10/residual-20A_s0+lr-0.05              a sweep over optim.lr
    cifar10/plain-56_s1+schedule-plateau         another schedule group
    synthetic/residual-8A_s0+train_size-256+iterations-16

Keys are shown by their last part where that is unambiguous (lr, iterations), else in full; lists
as `300_400`. The characters are those a Hydra override, a shell and Windows all take unquoted, so
a path into a run can be given as `resume=runs/.../last.pt` as it is. No two jobs of a sweep share
a folder unless they differ only in settings, which `resexp.launch.jobs.plan` refuses before anything
trains.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
from collections.abc import Iterator
from enum import Enum
from typing import Any

from resexp.config import ADDED, IDENTITY, WEIGHTS, Config, paper_shortcut

# The fields the first part of a folder name shows: <data>/<mode>-<depth><option>_s<seed>.
BASE_KEYS = ("data.name", "model.mode", "model.depth", "model.shortcut", "seed")
# Group choices shown when they differ from the preset's (the data is the first part of the name).
GROUPS_IN_NAME = ("model", "schedule")
ITEM, VALUE, LIST = "+", "-", "_"  # residual-20A_s0+lr-0.05+milestones-300_400
MAX_NAME = 200  # bytes of one folder name (filesystems allow 255): longer suffixes become a hash
BASE = re.compile(r"(?P<mode>plain|residual)-(?P<depth>\d+)(?P<shortcut>[ABC]?)_s(?P<seed>\d+)")


def schema_fields(schema: type = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every leaf field of the schema, in the schema's order; a field whose
    group is a setting is yielded with that group's metadata."""
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            for key, leaf in schema_fields(type(default), f"{prefix}{f.name}."):
                yield key, (f if not f.metadata.get(IDENTITY, True) else leaf)
        else:
            yield prefix + f.name, f


@functools.cache
def identity_keys() -> tuple[str, ...]:
    """Every field that changes a run's result, in the schema's order."""
    return tuple(k for k, f in schema_fields() if f.metadata.get(IDENTITY, True))


@functools.cache
def weight_keys() -> tuple[str, ...]:
    """The fields a checkpoint's tensors depend on: what resume=PATH must agree on."""
    fields = dict(schema_fields())
    model = (k for k in identity_keys() if k.startswith("model.") and fields[k].metadata.get(WEIGHTS, True))
    return (*model, "data.name")


@functools.cache
def short_names() -> dict[str, str]:
    """Each identity key's name in a folder: its last part where no other identity key ends so."""
    last = [k.rpartition(".")[2] for k in identity_keys()]
    return {k: (leaf if last.count(leaf) == 1 else k) for k, leaf in zip(identity_keys(), last, strict=True)}


def builtin(value: Any) -> Any:
    """A config value as plain data: enums as their strings, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [builtin(v) for v in value]
    return value


def flat(cfg: Any) -> dict[str, Any]:
    """{dotted.key: value} of a config given as dataclasses, a DictConfig or a nested dict."""
    from omegaconf import DictConfig, OmegaConf

    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    out: dict[str, Any] = {}

    def walk(prefix: str, d: dict) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                out[prefix + str(key)] = builtin(value)

    walk("", cfg)
    return out


@functools.cache
def defaults() -> dict[str, Any]:
    return flat(Config())


def of(cfg: Any) -> dict[str, Any]:
    """The identity of a config: {key: value} for every identity field. A field the config lacks
    (a run made by an older resexp) counts as its default, which is what that run computed."""
    values = {**defaults(), **flat(cfg)}
    return {k: values.get(k) for k in identity_keys()}


@functools.cache
def added_keys() -> tuple[str, ...]:
    """Identity fields added after digests were first written: in a digest only away from their default."""
    return tuple(k for k, f in schema_fields() if f.metadata.get(ADDED, False))


def digest(identity: dict[str, Any]) -> str:
    """A short hash of an identity, stored in status.json and checkpoints. A field added later
    counts only away from its default: a run of an older resexp keeps its digest."""
    keys = [k for k in identity_keys() if k not in added_keys() or not same(identity.get(k), defaults().get(k))]
    text = ";".join(f"{k}={identity.get(k)!r}" for k in keys)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every identity field whose values differ."""
    return [f"{k}: {before.get(k)} -> {now.get(k)}" for k in identity_keys() if not same(before.get(k), now.get(k))]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return builtin(a) == builtin(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b)


def shown(value: Any) -> str:
    """A value as a folder name shows it: 0.05, 1e-05, true, null, 300_400."""
    value = builtin(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return LIST.join(shown(v) for v in value)
    return str(value)


MAX_TAG = 200  # bytes of a file name's tag: a longer one becomes a hash
ESCAPED = {"%": "%25", "/": "%2F", ITEM: "%2B"}  # what a value in a file name may not hold as it is


def tagged(head: str, items: list[tuple[str, str | None]]) -> str:
    """The one way resexp names a file by what made it (an analysis, an evaluation): HEAD, then
    `+key-value` (`+key` for a flag) for each item. A value's '%', '/' and '+' are escaped, so
    that different items never give one name; a tag longer than MAX_TAG bytes becomes
    `+hash-<sha1>` of itself. A name never takes a '.' for a suffix: callers add theirs to it."""
    parts = []
    for key, value in items:
        if value is None:
            parts.append(f"{ITEM}{key}")
            continue
        for char, code in ESCAPED.items():
            value = value.replace(char, code)
        parts.append(f"{ITEM}{key}{VALUE}{value}")
    tag = "".join(parts)
    if len(tag.encode()) > MAX_TAG:
        tag = f"{ITEM}hash{VALUE}" + hashlib.sha1(tag.encode()).hexdigest()[:12]
    return head + tag


def base_name(values: dict[str, Any]) -> str:
    """<data>/<mode>-<depth><option>_s<seed> (a plain net has no shortcut option)."""
    family, depth, mode = values.get("model.family", "cifar"), values["model.depth"], values["model.mode"]
    option = "" if mode == "plain" else values.get("model.shortcut") or paper_shortcut(family, depth)
    return f"{values['data.name']}/{mode}-{depth}{option}_s{values['seed']}"


def folder_name(job: dict[str, Any], reference: dict[str, Any], groups: dict[str, str] | None = None) -> str:
    """A job's folder below runs/<name>/: the base name, then each group choice in `groups`
    (those that differ from the preset's) and each identity field whose value differs from
    `reference` (the preset's config for the same groups, depth, mode, shortcut and seed)."""
    items = [f"{group}{VALUE}{choice}" for group, choice in (groups or {}).items()]
    items += [
        f"{short_names()[k]}{VALUE}{shown(job.get(k))}"
        for k in identity_keys()
        if k not in BASE_KEYS and not same(job.get(k), reference.get(k))
    ]
    name = base_name(job)
    if not items:
        return name
    suffix = ITEM.join(items)
    if len(name.rpartition("/")[2]) + 1 + len(suffix) > MAX_NAME:  # config.yaml says the rest
        suffix = f"hash{VALUE}" + hashlib.sha1(suffix.encode()).hexdigest()[:12]
    return f"{name}{ITEM}{suffix}"


def disagreements(folder: str, identity: dict[str, Any]) -> list[str]:
    """Where a folder's name says otherwise than the run's config (an edited config.yaml, a folder
    renamed by hand): 'depth: the folder says 8, config.yaml 14'. Folders not named by resexp
    (hydra.run.dir=...) are not checked."""
    base, _, suffix = folder.partition(ITEM)
    match = BASE.fullmatch(base)
    if match is None:
        return []
    expected = {
        "model.mode": match["mode"],
        "model.depth": int(match["depth"]),
        "seed": int(match["seed"]),
    }
    if match["shortcut"]:
        expected["model.shortcut"] = match["shortcut"]
    out = [
        f"{short_names().get(k, k)}: the folder says {v}, config.yaml {identity.get(k)}"
        for k, v in expected.items()
        if not same(v, identity.get(k))
    ]
    keys = {name: k for k, name in short_names().items()}
    for item in suffix.split(ITEM) if suffix else []:
        name, _, value = item.partition(VALUE)
        if name in keys and value != shown(identity.get(keys[name])):
            out.append(f"{name}: the folder says {value}, config.yaml {shown(identity.get(keys[name]))}")
    return out
