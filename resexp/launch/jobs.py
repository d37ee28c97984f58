"""`resexp train` through Hydra, in two passes.

1. `plan` composes every job of the command with Hydra's own config loader and sweep splitting
   (`BasicSweeper.split_arguments`: the cartesian product of comma lists, the command line over a
   preset's sweep params), checks each config (`lifecycle.check`), names each job's folder
   (`run_folder`, resexp.identity), refuses two jobs that would share a folder, and admits each
   folder (`lifecycle.admit`, and the data each job will read). Nothing is written: a sweep with
   one bad value (-m model.depth=8,21) fails before its first job trains, and leaves no trace.
2. `launch` hands the same command line to `hydra.main`, so that Hydra's launchers (basic, joblib,
   submitit) run the jobs as they always do, each by calling `run_job`, which trains one run
   (`lifecycle.run`). Hydra composes each job again there, in another process for joblib and
   submitit, which receive configs, not resexp's objects; a job's folder is a function of its
   composed config (`run_folder`), so both passes name it alike.

The command's exit status is read from the run directories afterwards, since a launcher may have
run the jobs elsewhere: 0 when every job's run is complete.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from rich.console import Console
from rich.markup import escape

from resexp import distributed, identity
from resexp.config import CONFIG_PACKAGE, Config, to_object
from resexp.distributed import current, printed_line
from resexp.errors import (
    Aborted,
    ConfigError,
    Diverged,
    LauncherFailed,
    SweepInterrupted,
    UserError,
    one_line,
)
from resexp.launch.hydra import (
    BASIC_LAUNCHER,
    BASIC_SWEEPER,
    command_line,
    hydra_app,
    hydra_context,
    hydra_flags,
    register,
    split,
)
from resexp.run.hparams import SUFFIX
from resexp.rundir.folder import STATUS, RunDir

err = Console(stderr=True)


@dataclass
class Job:
    overrides: list[str]
    config: Config
    run_dir: Path
    sweep_dir: Path | None  # the folder of the whole sweep (-m), where Hydra writes multirun.yaml
    launcher: str = BASIC_LAUNCHER  # Hydra's launcher for the command (basic, joblib, submitit)


@contextmanager
def errors_name_the_job(overrides: list[str] | None, num: int) -> Iterator[None]:
    """Add which job of a sweep a mistake belongs to."""
    try:
        yield
    except UserError as e:
        if overrides is None:
            raise
        raise type(e)(f"{e} (job {num}: {' '.join(overrides)})") from None


def admit_all(jobs: list[Job]) -> None:
    """Check each job's run directory and data as `lifecycle.start` will (not damaged, the same
    identity and the same dataset as the run already there, if any; data that loads)."""
    from resexp.data import inspect
    from resexp.run.lifecycle import admit, not_imported

    checked: dict[str, Any] = {}
    for num, job in enumerate(jobs):
        with errors_name_the_job(job.overrides if job.sweep_dir is not None else None, num):
            not_imported(RunDir(job.run_dir))  # before its data is looked for: it has none here
            key = OmegaConf.to_yaml(OmegaConf.structured(job.config.data))
            if key not in checked:
                checked[key] = inspect(job.config.data)
            admit(job.config, RunDir(job.run_dir), checked[key])


def compose(overrides: list[str]) -> Config:
    """The checked config of a single run, e.g. compose(["model.depth=56"]) (for bench and tests)."""
    [job] = plan(overrides, multirun=False)
    return job.config


def plan(overrides: list[str], multirun: bool, trains: bool = True) -> list[Job]:
    """Compose and check every job of `resexp train [-m] OVERRIDES`; raise on the first mistake.
    `trains=False` (a config for a net that is not trained here: `resexp import`): the config's
    rules only, not whether this machine could train it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from resexp.config import validate
    from resexp.run.lifecycle import check

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
        if multirun:
            launcher_options(master.hydra.launcher)
        if multirun and master.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
            return []  # another sweeper chooses its jobs as it goes; Hydra composes them
        for num, job_override in enumerate(split(master) if multirun else [list(overrides)]):
            cfg = loader.load_sweep_config(master, job_override) if multirun else master
            with read_write(cfg.hydra), open_dict(cfg.hydra):
                cfg.hydra.job.num, cfg.hydra.job.id = num, str(num)
            HydraConfig.instance().set_config(cfg)
            task = copy.deepcopy(cfg)
            with read_write(task), open_dict(task):
                del task["hydra"]
            with errors_name_the_job(job_override if multirun else None, num):
                unknown_keys(task, Config)
                config = to_object(task)
                if trains:
                    check(config)
                else:
                    validate(config)
            hydra = cfg.hydra
            run_dir = Path(hydra.sweep.dir) / hydra.sweep.subdir if multirun else Path(hydra.run.dir)
            sweep_dir = Path(hydra.sweep.dir) if multirun else None
            jobs.append(Job(job_override, config, run_dir, sweep_dir, master.hydra.launcher.get("_target_")))
    refuse_shared_folders(jobs)
    return jobs


def launcher_options(launcher: DictConfig) -> None:
    """A launcher's own options that would fail only after the sweep folder was made."""
    for key, low, what in (("cpus_per_task", 1, "each job's threads"), ("timeout_min", 1, "minutes each job may run")):
        value = launcher.get(key)
        if value is not None and value < low:
            raise ConfigError(f"hydra.launcher.{key}={value} must be at least {low} ({what})")
    if launcher.get("n_jobs") == 0:  # joblib: the number of runs side by side; -1 = one per core
        raise ConfigError(
            "hydra.launcher.n_jobs=0 runs nothing: give the runs side by side (e.g. 2), or -1 for one per core"
        )


def refuse_shared_folders(jobs: list[Job]) -> None:
    """Refuse two jobs that would train in one folder: they can differ only in settings, which
    are not part of a run's identity (data.root, resume, device, ...)."""
    first: dict[Path, int] = {}
    for num, job in enumerate(jobs):
        other = first.setdefault(job.run_dir, num)
        if other == num:
            continue
        a, b = identity.flat(jobs[other].config), identity.flat(job.config)
        keys = [k for k in a if not identity.same(a[k], b.get(k))]
        both = f"jobs {other} ({' '.join(jobs[other].overrides)}) and {num} ({' '.join(job.overrides)})"
        if not keys:
            raise ConfigError(f"{both} are one run (the same values): drop one of them")
        raise ConfigError(
            f"{both} would train in one folder, {job.run_dir}: they differ only in {', '.join(keys)}, which "
            f"{'is' if len(keys) == 1 else 'are'} not part of a run's identity; sweep them in separate commands, each "
            "with its own name=..."
        )


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


def run_job(cfg: DictConfig) -> float | None:
    """One job, called by Hydra with its composed config. Reports its own failure in one line
    and returns None, so that Hydra goes on with the other jobs of a sweep and prints nothing
    more; `launch` reads the command's exit status from the jobs' returns."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from resexp.run.lifecycle import run

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.sweep.dir) / hydra_cfg.sweep.subdir if multirun else Path(hydra_cfg.run.dir)  # runs/...
    config = to_object(cfg)
    side_by_side = multirun and (hydra_cfg.launcher.get("n_jobs") or 1) != 1  # joblib: runs share the console
    if hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher.get("n_jobs") is not None:
        config.device = share_machine(config.device, hydra_cfg.job.num, hydra_cfg.launcher.n_jobs)
    elif hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher.get("cpus_per_task"):
        import torch  # submitit: the job's CPUs are its threads (torch would take every core of the node)

        torch.set_num_threads(int(hydra_cfg.launcher.cpus_per_task))
    try:
        last = run(config, run_dir, console=err, named=side_by_side)
        return float(last.get("test/error", math.nan))  # what a sweeper that optimises reads; None: failed
    except Aborted:
        remove_empty(run_dir)
        raise
    except Exception as e:  # resexp's own errors, the OS's, Diverged, TrainingFailed, and any other
        remove_empty(run_dir)
        if os.environ.get("RESEXP_DEBUG"):
            raise
        kind = "diverged" if isinstance(e, Diverged) else "error"
        line = printed_line(e, one_line(e))
        if line is not None:
            err.print(f"[bold red]{kind}:[/] {escape(line)}", highlight=False, soft_wrap=True)
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


def describe_sweep(folder: Path, jobs: list[Job]) -> None:
    """The experiment TensorBoard's HParams tab shows for the sweep's folder: over its runs so far
    and this command's jobs (resexp.run.hparams)."""
    from resexp.run.hparams import write_experiment
    from resexp.rundir.read import find_runs

    runs = [r.identity for r in find_runs(folder, lambda text: None)] if folder.is_dir() else []
    folder.mkdir(parents=True, exist_ok=True)
    write_experiment(folder, runs + [identity.of(job.config) for job in jobs])


@dataclass(frozen=True)
class Launched:
    """What a `resexp train` command did: the folder of each of its runs, and those not complete."""

    runs: list[Path]
    unfinished: list[Path]

    @property
    def complete(self) -> bool:
        return not self.unfinished


def launch(args: list[str], multirun: bool, debug: bool) -> Launched:
    """Plan the command (compose, check, name and admit every job), then run its jobs through
    Hydra's runner (its launcher calls `run_job` once per job, here or in other processes); each
    job's run folder, and those whose runs are not complete, as each job's return says."""
    from hydra.core.utils import JobReturn, JobStatus

    register()
    flags, overrides = hydra_flags(args)
    if flags and multirun:
        raise ConfigError(f"{flags[0]} prints one job and cannot be combined with -m: drop -m (and the comma lists)")
    if flags:
        show(args, flags, overrides)
        return Launched([], [])
    distributed.join()  # under torchrun: before anything can fail in one process alone

    def planned() -> list[Job]:
        jobs = plan(overrides, multirun)
        admit_all(jobs)  # reads each run's folder and data: a file missing on one node fails there alone
        return jobs

    jobs = distributed.all_or_none(planned)  # a failure in any process ends all of them, rank 0 saying why
    new_dirs = {job.sweep_dir for job in jobs if job.sweep_dir is not None and not job.sweep_dir.exists()}
    if jobs and jobs[0].sweep_dir is not None and current().main:
        describe_sweep(jobs[0].sweep_dir, jobs)
    quiet = [] if current().main else ["hydra/hydra_logging=disabled"]  # under torchrun rank 0 speaks for all
    mode = "hydra.mode=MULTIRUN" if multirun else "hydra.mode=RUN"
    env = {"HYDRA_FULL_ERROR": "1", **({"RESEXP_DEBUG": "1"} if debug else {})}  # errors reach us, not Hydra's printer
    began = time.time()
    try:
        with command_line(sys.argv, env), hydra_app() as app:
            if multirun:
                returns = app.multirun("config", run_job, [*overrides, *quiet, mode])
            else:
                returns = [[app.run("config", run_job, [*overrides, *quiet, mode])]]
    except KeyboardInterrupt:
        started = [job for job in jobs if RunDir(job.run_dir).status().get("status") in ("running", "interrupted")]
        if started:  # a launcher that runs the jobs in other processes (submitit) was waiting for them
            raise SweepInterrupted(len(started)) from None
        raise
    except Exception as e:
        # submitit reports a job that a signal stopped (Interrupted is a BaseException, so `run_job`
        # lets it through) as a failed job, sometimes before its own process sees the Ctrl-C
        stopped = [job for job in jobs if stopped_by_signal(RunDir(job.run_dir), since=began)]
        if stopped:
            raise SweepInterrupted(len(stopped)) from None
        if not jobs or debug:
            raise
        left = unfinished(jobs)  # a job killed under submitit, a run folder that cannot be made, ...
        started = [job.run_dir for job in left if RunDir(job.run_dir).has_checkpoint()]
        raise LauncherFailed(e, [job.run_dir for job in left], started) from e
    finally:
        for folder in new_dirs:  # a sweep folder holding only what the command wrote before any run started
            if folder.is_dir() and all(p.name == "multirun.yaml" or p.name.endswith(SUFFIX) for p in folder.iterdir()):
                for p in folder.iterdir():
                    p.unlink()
                remove_empty(folder)
    outcomes = [r for batch in returns or [] if isinstance(batch, list) for r in batch if isinstance(r, JobReturn)]
    done = [r.status == JobStatus.COMPLETED and r._return_value is not None for r in outcomes]
    folders = [job.run_dir for job in jobs]
    if len(done) == len(jobs) and jobs:
        left = [job for job, ok in zip(jobs, done, strict=True) if not ok]
    else:  # a sweeper of its own: its jobs are not known here
        left = [] if all(done) else unfinished(jobs)
        if not all(done) and not left:
            return Launched(folders, folders)
    if left and current().main and multirun and left[0].launcher != BASIC_LAUNCHER:
        for job in left:  # the jobs' own lines may be in the launcher's logs (submitit)
            err.print(f"[bold red]error:[/] {escape(str(job.run_dir))}: {escape(state_of(job))}", soft_wrap=True)
    return Launched(folders, [job.run_dir for job in left])


def stopped_by_signal(run: RunDir, since: float) -> bool:
    """Whether the run was stopped by a signal after `since` (its status says so, written then)."""
    try:
        written = run.file(STATUS).stat().st_mtime
    except OSError:
        return False
    return written >= since and run.status().get("signal") is not None


def unfinished(jobs: list[Job]) -> list[Job]:
    """Jobs whose runs are not complete now, read from the run directories, since a launcher may
    have run the jobs in other processes (joblib) or on other machines (submitit)."""
    return [job for job in jobs if not RunDir(job.run_dir).finished(job.config.schedule.iterations)]


def state_of(job: Job) -> str:
    """What an unfinished job's run directory says about it, for the line after a sweep."""
    status = RunDir(job.run_dir).status()
    if not status:
        return "did not start"
    reason = status.get("reason") or status.get("signal") or ""
    return f"{status.get('status')} at iteration {status.get('step')}" + (f" ({reason})" if reason else "")


def show(args: list[str], flags: list[str], overrides: list[str]) -> None:
    """Hydra's own flags (--cfg job, --info, --help): checked as a run would be, then printed by
    hydra.main itself, which reads them from sys.argv; nothing trains."""
    import hydra

    if any(f in ("--cfg", "-c") for f in flags):
        plan(overrides, multirun=False)  # an invalid config is refused, not printed
    main = hydra.main(config_path="pkg://" + CONFIG_PACKAGE, config_name="config", version_base="1.3")(run_job)
    with command_line(["resexp train", *args], {"HYDRA_FULL_ERROR": "1"}):
        main()
