"""resexp's side of Hydra: the config loader over resexp's configs, a job's folder as Hydra
resolves it (`run_folder`, through the `resexp.run_path` resolver that hydra.run.dir and
hydra.sweep.subdir use), the basic sweeper's split of a command into jobs, Hydra's own flags, and
`hydra.main` with a given command line (`hydra_app`, `command_line`). resexp.launch.jobs plans and
runs the jobs through these."""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from resexp import identity
from resexp.config import CONFIG_PACKAGE
from resexp.config import register as schemas
from resexp.errors import (
    ConfigError,
)


def register() -> None:
    """The schemas (resexp.config.register) and the resolver that names a job's folder."""
    schemas()
    if not OmegaConf.has_resolver("resexp.run_path"):
        OmegaConf.register_new_resolver("resexp.run_path", run_path)


def run_path(*, _root_: DictConfig) -> str:
    """A job's folder below runs/<name>/ (hydra.run.dir, hydra.sweep.subdir): resexp.launch.hydra.run_folder."""
    from resexp.launch.hydra import run_folder

    return run_folder(_root_)


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


# Hydra's own flags, and those that take a value (`--cfg job`): they are not overrides.
FLAG_VALUES = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


HYDRA_FLAGS = FLAG_VALUES | {"--help", "-h", "--hydra-help", "--version", "--resolve", "--info", "-i"}


def run_folder(root: DictConfig) -> str:
    """The folder of one job below runs/<name>/ (resexp.identity.folder_name), from its composed
    config with the hydra node: its identity against the preset's, i.e. the config composed from
    the job's group choices (the preset included), with the fields the base name shows set as the
    job sets them (their interpolations, e.g. cifar_fig6's warm-up by depth, follow), without its
    other value overrides. Called by Hydra when it resolves hydra.run.dir or hydra.sweep.subdir, in
    whichever process runs the job (joblib, submitit), so it composes with Hydra's own loader."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = tuple(root.hydra.overrides.task)
    if task in _folders:  # Hydra resolves a job's folder several times (its run dir, its sweep subdir, ...)
        return _folders[task]
    loader = GlobalHydra.instance().config_loader()
    groups = set(loader.list_groups(""))
    overrides = OverridesParser.create().parse_overrides(list(task))
    chosen = tuple(o.input_line for o in overrides if o.key_or_group in groups)
    preset = tuple(o.input_line for o in overrides if o.key_or_group == "experiment")
    reference = copy.deepcopy(composed(loader, chosen))
    with open_dict(reference):
        for key in identity.BASE_KEYS:
            OmegaConf.update(reference, key, OmegaConf.select(root, key), merge=False)
    choices, preset_choices = root.hydra.runtime.choices, composed(loader, preset).hydra.runtime.choices
    shown = {g: choices[g] for g in identity.GROUPS_IN_NAME if choices.get(g) != preset_choices.get(g)}
    _folders[task] = identity.folder_name(task_values(root), task_values(reference), shown)
    return _folders[task]


_composed: dict[tuple[str, ...], DictConfig] = {}


_folders: dict[tuple[str, ...], str] = {}  # a job's overrides -> its folder: the configs do not change in a process


def composed(loader: Any, overrides: tuple[str, ...]) -> DictConfig:
    """The config of `overrides` (a preset and group choices), composed once per process."""
    if overrides not in _composed:
        from hydra.types import RunMode

        _composed[overrides] = loader.load_configuration("config", list(overrides), run_mode=RunMode.RUN)
    return _composed[overrides]


def task_values(cfg: DictConfig) -> dict[str, Any]:
    """The identity values of a composed config (its hydra node left out, interpolations resolved)."""
    return identity.of(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))


@contextmanager
def hydra_context() -> Iterator:
    """Hydra's config loader over resexp's configs (the compose API's global state, cleared after)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register()
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def split(master: DictConfig) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper forms them from the preset's sweep params
    and the command's overrides (later keys win)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + list(master.hydra.overrides.task))
    try:
        [jobs] = BasicSweeper.split_arguments(parsed, None)
    except HydraException:
        wrong = next(o.input_line for o in parsed if o.is_sweep_override() and not o.is_discrete_sweep())
        raise ConfigError(f"{wrong}: the basic sweeper sweeps comma lists only (a,b,c)") from None
    return jobs


def hydra_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's own flags (--cfg job, --info, --help, ...) and the overrides, from a command line."""
    flags: list[str] = []
    overrides: list[str] = []
    taking = None
    for arg in args:
        if taking is not None:
            flags.append(arg)
            taking = None
        elif arg.startswith("-"):
            if arg.split("=", 1)[0] not in HYDRA_FLAGS:
                raise ConfigError(
                    f"{arg} is not an option of resexp train: it takes -m, --debug, Hydra's "
                    f"{', '.join(sorted(f for f in HYDRA_FLAGS if f.startswith('--')))}, and overrides key=value"
                )
            flags.append(arg)
            taking = arg if arg in FLAG_VALUES else None
        elif flags and flags[-1] in ("--info", "-i") and arg in INFO_TOPICS:
            flags.append(arg)
        else:
            overrides.append(arg)
    return flags, overrides


@contextmanager
def command_line(argv: list[str], env: dict[str, str]) -> Iterator[None]:
    """sys.argv and environment variables as `hydra.main` reads them, for the length of a call."""
    saved_argv, saved_env = sys.argv, {k: os.environ.get(k) for k in env}
    sys.argv = argv
    os.environ.update(env)
    try:
        yield
    finally:
        sys.argv = saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def hydra_app() -> Iterator[Any]:
    """Hydra's runner over resexp's configs, set up as hydra.main sets it up (the same config
    search path, launchers and sweepers), so that its results come back to `launch`."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    register()
    GlobalHydra.instance().clear()
    try:
        yield Hydra.create_main_hydra2("resexp", create_config_search_path("pkg://" + CONFIG_PACKAGE))
    finally:
        GlobalHydra.instance().clear()
