"""`resexp train` through Hydra: compose every job of a command, check each one, then hand the
command to Hydra, whose launchers (basic, joblib, submitit) run the jobs by calling `task`.

Checking every job first means that a sweep with one bad value (-m model.depth=8,21) fails before
its first run trains, and that a mistake leaves nothing on disk: Hydra makes a job's run
directory before the job starts, so nothing may go wrong after that which could have been known
before. Jobs are composed with Hydra's own config loader and expanded as its basic sweeper does
(the cartesian product of comma lists, the command line overriding a preset's sweep params).
"""

from __future__ import annotations

import copy
import itertools
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from omegaconf import DictConfig, open_dict, read_write
from rich.console import Console
from rich.markup import escape

from resexp.config import CONFIG_PACKAGE, Config, register, to_object
from resexp.distributed import current, voice
from resexp.errors import ConfigError, UserError, one_line
from resexp.rundir import STATUS, RunDir

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
err = Console(stderr=True)
failures: list[str] = []  # jobs of this command that failed in this process (launchers that run in-process)


@dataclass
class Job:
    overrides: list[str]
    config: Config
    run_dir: Path
    sweep_dir: Path | None  # the folder of the whole sweep (-m), where Hydra writes multirun.yaml
    status_before: str | None = None  # the run directory's status before this command (see `admit_all`)


@contextmanager
def naming(overrides: list[str] | None, num: int) -> Iterator[None]:
    """Add which job of a sweep a mistake belongs to."""
    try:
        yield
    except UserError as e:
        if overrides is None:
            raise
        raise type(e)(f"{e} (job {num}: {' '.join(overrides)})") from None


def admit_all(jobs: list[Job]) -> None:
    """Check each job's run directory and data as `resexp.train.start` will (the same config and
    the same dataset as the run already there, if any), and note its status."""
    from resexp.data import source
    from resexp.train import admit

    for num, job in enumerate(jobs):
        with naming(job.overrides if job.sweep_dir is not None else None, num):
            job.status_before = admit(job.config, RunDir(job.run_dir), source(job.config.data))


@contextmanager
def hydra_context() -> Iterator:
    """Hydra's config loader over resexp's configs (the compose API's global state, cleared after)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register()
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def compose(overrides: list[str]) -> Config:
    """The checked config of a single run, e.g. compose(["model.depth=56"]) (for bench and tests)."""
    [job] = plan(overrides, multirun=False)
    return job.config


def sweep_overrides(master: DictConfig) -> list[list[str]]:
    """Each job's overrides: the product of the preset's sweep params and the command's overrides
    (later keys win), as Hydra's basic sweeper forms them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.get("params") or {}).items()]
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(params + list(master.hydra.overrides.task)):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ConfigError(f"{override.input_line}: the basic sweeper sweeps comma lists only (a,b,c)")
    return [list(job) for job in itertools.product(*choices.values())]


def plan(overrides: list[str], multirun: bool) -> list[Job]:
    """Compose and check every job of `resexp train [-m] OVERRIDES`; raise on the first mistake."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from resexp.train import check

    parser = OverridesParser.create()
    for line in overrides:  # name the override that does not parse
        parser.parse_overrides([line])
    sweeps = [o.input_line for o in parser.parse_overrides(overrides) if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(
            f"{sweeps[0]} is a sweep: add -m (--multirun) for one run per value, or write a list as key=[a,b]"
        )
    jobs = []
    with hydra_context() as loader:
        master = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
        cpus = master.hydra.launcher.get("cpus_per_task") if multirun else None
        if cpus is not None and cpus < 1:
            raise ConfigError(f"hydra.launcher.cpus_per_task={cpus} must be at least 1 (each job's threads)")
        if multirun and master.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
            return []  # another sweeper chooses its jobs as it goes; Hydra composes them
        job_overrides = sweep_overrides(master) if multirun else [list(overrides)]
        for num, job_override in enumerate(job_overrides):
            cfg = loader.load_sweep_config(master, job_override) if multirun else master
            with read_write(cfg.hydra), open_dict(cfg.hydra):
                cfg.hydra.job.num, cfg.hydra.job.id = num, str(num)
            HydraConfig.instance().set_config(cfg)
            hydra = cfg.hydra
            run_dir = Path(hydra.sweep.dir) / hydra.sweep.subdir if multirun else Path(hydra.run.dir)
            task = copy.deepcopy(cfg)
            with read_write(task), open_dict(task):
                del task["hydra"]
            with naming(job_override if multirun else None, num):
                unknown_keys(task, Config)
                config = to_object(task)
                check(config)
            jobs.append(Job(job_override, config, run_dir, Path(hydra.sweep.dir) if multirun else None))
    return jobs


def unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Keys added with +key=value that the schema does not have (OmegaConf lets them through)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node:
        if key not in fields:
            raise ConfigError(
                f"{prefix}{key} is not a field: {prefix.rstrip('.') or 'the top level'} has {', '.join(fields)}"
            )
        child = node[key] if isinstance(node.get(key), DictConfig) else None
        if child is not None and dataclasses.is_dataclass(fields[key].default_factory()):
            unknown_keys(child, type(fields[key].default_factory()), f"{prefix}{key}.")


def task(cfg: DictConfig) -> float | None:
    """One job, called by Hydra with its composed config. Reports its own failure in one line
    and returns None, so that Hydra goes on with the other jobs of a sweep and prints nothing
    more; `launch` decides the command's exit status from `failures` and the run directories."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from resexp.train import Aborted, Diverged, run

    hydra_cfg = HydraConfig.get()
    run_dir = Path(os.path.relpath(hydra_cfg.runtime.output_dir))  # as the user wrote it: runs/...
    config = to_object(cfg)
    if hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher.get("n_jobs") is not None:
        config.device = share_machine(config.device, hydra_cfg.job.num, hydra_cfg.launcher.n_jobs)
    elif hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher.get("cpus_per_task"):
        import torch  # submitit: the job's CPUs are its threads (torch would take every core of the node)

        torch.set_num_threads(int(hydra_cfg.launcher.cpus_per_task))
    try:
        return run(config, run_dir, console=err).get("test/error")
    except Aborted:
        remove_empty(run_dir)
        raise
    except Exception as e:  # resexp's own errors, the OS's, Diverged, TrainingFailed, and any other
        remove_empty(run_dir)
        if os.environ.get("RESEXP_DEBUG"):
            raise
        kind = "diverged" if isinstance(e, Diverged) else "error"
        line = voice(e, one_line(e))
        if line is not None:
            err.print(f"[bold red]{kind}:[/] {escape(line)}", highlight=False, soft_wrap=True)
        failures.append(str(run_dir))
        return None


def share_machine(device: str, job_num: int, n_jobs: int) -> str:
    """For runs of a sweep launched side by side (e.g. hydra/launcher=joblib): spread them over
    the visible GPUs (several runs per GPU is fine), and on a CPU give each its share of the
    cores, since threads of several runs fighting over the same cores slow all of them down."""
    import torch

    cores = os.cpu_count() or 1
    n_jobs = cores if n_jobs is None or n_jobs < 1 else n_jobs
    if device == "auto" and torch.cuda.is_available():
        return f"cuda:{job_num % torch.cuda.device_count()}"
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        torch.set_num_threads(max(1, cores // n_jobs))
    return device


def remove_empty(path: Path, levels: int = 4) -> None:
    """Drop a folder Hydra made for a run that failed before writing anything, and its parents
    while they are empty, so that plot and report find no trace of it."""
    for folder in [path, *path.parents][:levels]:
        try:
            folder.rmdir()
        except OSError:
            return


def launch(overrides: list[str], multirun: bool, debug: bool) -> bool:
    """Run the command through hydra.main with its argv, as the shell would have given it;
    whether every job finished (or had finished before)."""
    import hydra

    register()
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's own: --cfg job, --info, ...
    if flags and multirun:
        raise ConfigError(f"{flags[0]} prints one job and cannot be combined with -m: drop -m (and the comma lists)")
    jobs = plan(overrides, multirun) if not flags else []
    admit_all(jobs)
    new_dirs = {job.sweep_dir for job in jobs if job.sweep_dir is not None and not job.sweep_dir.exists()}
    main = hydra.main(config_path="pkg://" + CONFIG_PACKAGE, config_name="config", version_base="1.3")(task)
    quiet = [] if current().main else ["hydra/hydra_logging=disabled"]  # under torchrun rank 0 speaks for all
    argv = ["resexp train", *(["--multirun"] if multirun else []), *overrides, *quiet]
    env = {"HYDRA_FULL_ERROR": "1", **({"RESEXP_DEBUG": "1"} if debug else {})}  # errors reach us, not Hydra's printer
    failures.clear()
    began = time.time()
    try:
        with mock.patch.object(sys, "argv", argv), mock.patch.dict(os.environ, env):
            main()
    except KeyboardInterrupt:
        started = [job for job in jobs if RunDir(job.run_dir).status().get("status") in ("running", "interrupted")]
        if started:  # a launcher that runs the jobs in other processes (submitit) was waiting for them
            raise SweepInterrupted(len(started)) from None
        raise
    except Exception:
        # submitit reports a job that a signal stopped (Interrupted is a BaseException, so `task`
        # lets it through) as a failed job, sometimes before its own process sees the Ctrl-C
        stopped = [job for job in jobs if stopped_by_signal(RunDir(job.run_dir), since=began)]
        if stopped:
            raise SweepInterrupted(len(stopped)) from None
        raise
    finally:
        for folder in new_dirs:  # a sweep folder holding only Hydra's multirun.yaml: no run was written
            if folder.is_dir() and [p.name for p in folder.iterdir()] == ["multirun.yaml"]:
                (folder / "multirun.yaml").unlink()
                remove_empty(folder)
    if not current().main:  # rank 0 reads the run directories, which other nodes may not see
        return not failures
    return not failures and not failed(jobs)


def stopped_by_signal(run: RunDir, since: float) -> bool:
    """Whether the run was stopped by a signal after `since` (its status says so, written then)."""
    try:
        written = run.file(STATUS).stat().st_mtime
    except OSError:
        return False
    return written >= since and run.status().get("signal") is not None


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C while a launcher waited for jobs running in their own processes, which received it too."""

    def __init__(self, count: int) -> None:
        super().__init__(
            f"interrupted: {count} job(s) of the sweep had started; each saves a checkpoint and stops (their "
            "logs say where); run the same command again to resume"
        )


def failed(jobs: list[Job]) -> list[Job]:
    """Jobs this command tried and did not finish: not complete now, and not skipped because
    they were complete or diverged before it. Read from the run directories, since a launcher
    may have run the jobs in other processes (joblib) or on other machines (submitit)."""
    return [
        job
        for job in jobs
        if job.status_before not in ("complete", "diverged")
        and RunDir(job.run_dir).status().get("status") != "complete"
    ]
