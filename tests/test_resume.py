"""Crash safety by fault injection, each with its exact outcome: SIGKILL and SIGINT in a real
process; signals, a full disk, a truncated checkpoint, a NaN, torn and garbage metrics, lost
checkpoints, locks and resume=PATH in-process through the CLI's entry point."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import folder, leftovers, process_env, resexp, rows, signal_at, without_time, write_npz
from resexp.errors import Aborted
from resexp.run import checkpoint, lifecycle
from resexp.run.signals import StopSignals
from resexp.rundir import checkpoints
from resexp.rundir import folder as rundir
from resexp.rundir.folder import RunDir, RunLock

RUN = [
    "data=synthetic",
    "data.train_size=256",
    "data.test_size=64",
    "model.depth=8",
    "schedule.iterations=60",
    "eval_every=10",
    "device=cpu",
]
RUN_DIR = folder(*RUN)
LONG = [*RUN, "schedule.iterations=100"]  # for real processes: time to signal them
LONG_DIR = folder(*LONG)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A folder holding one uninterrupted run of RUN (tests copy it: `copy_runs`)."""
    cwd = tmp_path_factory.mktemp("reference")
    result = resexp("train", *RUN, cwd=cwd)
    assert result.code == 0, result.stderr
    return cwd


@pytest.fixture(scope="module")
def reference(finished_run):
    """The metrics of an uninterrupted run."""
    return without_time(rows(finished_run / RUN_DIR))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A folder holding RUN stopped by Ctrl-C at iteration 35 of 60: evaluations at 10, 20 and 30,
    a checkpoint at 35 (tests copy it: `copy_runs`)."""
    cwd = tmp_path_factory.mktemp("stopped")
    with pytest.MonkeyPatch.context() as patch:
        signal_at(patch, 35, signal.SIGINT)
        assert resexp("train", *RUN, cwd=cwd).code == 130
    return cwd


def copy_runs(source: Path, cwd: Path) -> None:
    shutil.copytree(source / "runs", cwd / "runs")


def status(cwd, run_dir=RUN_DIR):
    return json.loads((cwd / run_dir / "status.json").read_text())


# --------------------------------------------------------------------------- real processes


def start(cwd, *extra):
    cmd = [sys.executable, "-m", "resexp", "train", *LONG, *extra]
    return subprocess.Popen(cmd, cwd=cwd, env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(cwd, n, proc, timeout=120):
    path = cwd / LONG_DIR / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the run did not get going")


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("long")
    result = resexp("train", *LONG, cwd=cwd)
    assert result.code == 0, result.stderr
    return without_time(rows(cwd / LONG_DIR))


@pytest.mark.parametrize("after_rows,extra_delay", [(3, 0.03)])
def test_sigkill_anywhere_then_rerun_gives_identical_metrics(tmp_path, long_reference, after_rows, extra_delay):
    proc = start(tmp_path)
    wait_for_rows(tmp_path, after_rows, proc)
    time.sleep(extra_delay)
    proc.kill()
    proc.wait()
    result = resexp("train", *LONG, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "resuming" in result.stderr
    assert without_time(rows(tmp_path / LONG_DIR)) == long_reference
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / LONG_DIR))
    acc.Reload()
    assert [e.step for e in acc.Scalars("test/error")] == [r["step"] for r in long_reference]  # none twice
    assert status(tmp_path, LONG_DIR)["status"] == "complete"


def test_sigint_in_a_real_process_saves_and_says_how_to_resume(tmp_path, long_reference):
    proc = start(tmp_path)
    wait_for_rows(tmp_path, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "SIGINT at iteration" in stderr and "run the same command again to resume" in stderr
    assert status(tmp_path, LONG_DIR)["status"] == "interrupted" and status(tmp_path, LONG_DIR)["step"] >= 20
    assert resexp("train", *LONG, cwd=tmp_path).code == 0
    assert without_time(rows(tmp_path / LONG_DIR)) == long_reference


# --------------------------------------------------------------------------- signals, in-process


def test_sigterm_mid_interval_saves_there_and_the_resume_is_exact(tmp_path, reference, monkeypatch):
    signal_at(monkeypatch, 23, signal.SIGTERM)
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 128 + signal.SIGTERM and "SIGTERM at iteration 23" in result.stderr
    assert status(tmp_path) | {"iterations": 0, "identity": ""} == {
        "status": "interrupted",
        "step": 23,
        "iterations": 0,
        "signal": "SIGTERM",
        "identity": "",
    }
    assert torch.load(tmp_path / RUN_DIR / "last.pt", weights_only=True)["step"] == 23
    monkeypatch.undo()
    again = resexp("train", *RUN, cwd=tmp_path)
    assert again.code == 0 and f"resuming {RUN_DIR} from iteration 23" in again.stderr
    assert without_time(rows(tmp_path / RUN_DIR)) == reference


def test_a_second_signal_aborts_at_once_and_the_run_resumes_from_its_last_checkpoint(tmp_path, reference, monkeypatch):
    monkeypatch.setattr(StopSignals, "ECHO", 0.05)
    signal_at(monkeypatch, 23, signal.SIGINT, signal.SIGINT, gap=0.1)
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 130 and result.lines[-1] == (
        "aborted by a second SIGINT: no checkpoint since the last evaluation; run the same command again to resume "
        "from it"
    )
    assert status(tmp_path)["status"] == "interrupted" and status(tmp_path)["saved"] is False
    assert torch.load(tmp_path / RUN_DIR / "last.pt", weights_only=True)["step"] == 20
    monkeypatch.undo()
    assert resexp("train", *RUN, cwd=tmp_path).code == 0
    assert without_time(rows(tmp_path / RUN_DIR)) == reference


def test_a_signal_forwarded_by_a_launcher_counts_once(tmp_path, reference, monkeypatch):
    """The terminal's Ctrl-C and the one torchrun or submitit forwards arrive milliseconds apart:
    one request, so the run saves where it is."""
    signal_at(monkeypatch, 23, signal.SIGINT, signal.SIGINT, gap=0.001)
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 130 and "SIGINT at iteration 23: checkpoint saved" in result.stderr
    assert status(tmp_path)["status"] == "interrupted" and "saved" not in status(tmp_path)
    assert torch.load(tmp_path / RUN_DIR / "last.pt", weights_only=True)["step"] == 23


def test_ctrl_c_while_the_data_loads_leaves_nothing(tmp_path, monkeypatch):
    real = lifecycle.build_data

    def slow_data(*args):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        return real(*args)

    monkeypatch.setattr(lifecycle, "build_data", slow_data)
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 130 and result.lines == ["interrupted by SIGINT before training started: nothing was written"]
    assert leftovers(tmp_path) == []


def test_first_signal_asks_the_loop_to_stop_and_the_second_aborts_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN under nohup
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGINT) == stop.handle and signal.getsignal(signal.SIGTERM) == stop.handle
        with pytest.raises(Aborted) as early:  # before training: at once, there is nothing to save
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert not early.value.started
        stop.started = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.received == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)  # its echo from a launcher, milliseconds later: no abort
        time.sleep(0.01)
        stop.first_at -= stop.ECHO  # later: a second request
        with pytest.raises(Aborted) as second:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        assert second.value.started
        under_torchrun = StopSignals(second_aborts=False)
        under_torchrun.started = True
        under_torchrun.handle(signal.SIGINT, None)
        under_torchrun.first_at -= 60
        under_torchrun.handle(signal.SIGTERM, None)  # never aborts: torchrun's SIGKILL does
        assert under_torchrun.received == signal.SIGINT
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored


# --------------------------------------------------------------------------- damaged run directories


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, stopped, reference):
    copy_runs(stopped, tmp_path)
    last = tmp_path / RUN_DIR / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "is not a readable checkpoint" in result.stderr and "resuming from the previous checkpoint" in result.stderr
    assert without_time(rows(tmp_path / RUN_DIR)) == reference


def test_a_torn_last_metrics_line_is_repaired_with_a_warning(tmp_path, stopped, reference):
    copy_runs(stopped, tmp_path)
    metrics = tmp_path / RUN_DIR / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 40, "epoch": 5.0, "lr"')  # a crash mid-write
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 0 and "metrics.jsonl line 4 was torn by a crash mid-write; removing it" in result.stderr
    assert without_time(rows(tmp_path / RUN_DIR)) == reference


@pytest.mark.parametrize("line", ["garbage", "null", "[1, 2, 3]", '{"step": 25}', '{"step": 5, "epoch": 1}'])
def test_a_malformed_metrics_line_is_refused_by_number_and_nothing_is_dropped(tmp_path, stopped, line):
    copy_runs(stopped, tmp_path)
    metrics = tmp_path / RUN_DIR / "metrics.jsonl"
    good = metrics.read_text().splitlines()
    metrics.write_text("\n".join([good[0], line, *good[1:]]) + "\n")
    before = {p.name: p.read_bytes() for p in (tmp_path / RUN_DIR).iterdir()}
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 1 and len(result.lines) == 1
    assert f"{RUN_DIR}/metrics.jsonl line 2 is not a metrics row" in result.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / RUN_DIR).iterdir()} == before


def files(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "metrics.jsonl").unlink(), "its checkpoint is at iteration 35 but metrics.jsonl is gone"),
        (
            lambda d: (d / "metrics.jsonl").write_text((d / "metrics.jsonl").read_text().split("\n", 1)[1]),
            "its checkpoint is at iteration 35 but metrics.jsonl was changed after the run wrote it",
        ),
        (
            lambda d: (d / "metrics.jsonl").write_text((d / "metrics.jsonl").read_text().replace("0.", "1.", 1)),
            "its checkpoint is at iteration 35 but metrics.jsonl was changed after the run wrote it",
        ),
        (lambda d: (d / "config.yaml").unlink(), "but no config.yaml"),
        (lambda d: (d / "data.json").unlink(), "but no data.json"),
        (lambda d: (d / "data.json").write_text("garbage"), "data.json is not a data record"),
    ],
)
def test_a_run_folder_with_a_file_lost_or_wrong_is_damaged_never_resumed(tmp_path, stopped, damage, message):
    """A file a started run must have, missing or unreadable: one line naming it and the two ways
    out, nothing touched (before: metrics.jsonl deleted resumed and kept only the new rows)."""
    copy_runs(stopped, tmp_path)
    run_dir = tmp_path / RUN_DIR
    damage(run_dir)
    before = files(run_dir)
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 1 and len(result.lines) == 1 and message in result.lines[0], result.stderr
    assert "restore" in result.lines[0] or "delete the folder" in result.lines[0]
    assert files(run_dir) == before


def test_a_config_yaml_edited_to_fit_another_command_is_caught_by_the_checkpoint(tmp_path, stopped):
    """config.yaml edited (or replaced) to say lr 0.05, then a command with lr 0.05 aimed at the
    folder: the checkpoint remembers what it was trained as (before: the two configs were mixed)."""
    copy_runs(stopped, tmp_path)
    config = tmp_path / RUN_DIR / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.1", "lr: 0.05"))
    result = resexp("train", *RUN, "optim.lr=0.05", f"hydra.run.dir={RUN_DIR}", cwd=tmp_path)
    assert result.code == 1 and len(result.lines) == 1
    assert (
        "is damaged: its checkpoint was trained with another config than config.yaml says (optim.lr: 0.1 -> 0.05)"
        in (result.lines[0])
    )


@pytest.mark.parametrize("status_text", ['{"status": "running", "step": 60}', "garbage", None])
def test_a_finished_run_is_never_trained_past_its_end_whatever_status_json_says(
    tmp_path, finished_run, reference, status_text
):
    """What SIGKILL or a full disk between the last checkpoint and the final status leaves:
    before, the run resumed at 60 of 60 and trained without end ([250/60])."""
    copy_runs(finished_run, tmp_path)
    status_file = tmp_path / RUN_DIR / "status.json"
    if status_text is None:
        status_file.unlink()
    else:
        status_file.write_text(status_text)
    again = resexp("train", *RUN, cwd=tmp_path)
    assert again.code == 0 and again.lines == [
        f"{RUN_DIR} is complete already (status.json said "
        f"{'running' if status_text and 'running' in status_text else 'nothing'}; corrected); skipping it"
    ]
    assert without_time(rows(tmp_path / RUN_DIR)) == reference
    assert status(tmp_path)["status"] == "complete" and status(tmp_path)["step"] == 60


def test_a_complete_run_whose_metrics_were_lost_is_damaged(tmp_path, finished_run):
    copy_runs(finished_run, tmp_path)
    (tmp_path / RUN_DIR / "metrics.jsonl").write_text("")
    again = resexp("train", *RUN, cwd=tmp_path)
    assert again.code == 1 and "its checkpoint is at iteration 60 but metrics.jsonl was changed" in again.stderr


def test_metrics_without_checkpoints_are_not_silently_started_over(tmp_path, stopped):
    copy_runs(stopped, tmp_path)
    (tmp_path / RUN_DIR / "last.pt").unlink()
    (tmp_path / RUN_DIR / "prev.pt").unlink()
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 1 and "has metrics up to iteration 30 but no checkpoint to resume from" in result.stderr
    assert len(rows(tmp_path / RUN_DIR)) == 3


def test_nan_loss_stops_the_run_and_marks_it_diverged(tmp_path):
    result = resexp("train", *RUN, "optim.lr=1e6", cwd=tmp_path)
    assert result.code == 1
    assert "diverged: training loss is nan at iteration 10" in result.stderr.lower()
    run_dir = folder(*RUN, "optim.lr=1e6")
    assert status(tmp_path, run_dir)["status"] == "diverged"
    assert rows(tmp_path / run_dir)[-1]["diverged"] is True and rows(tmp_path / run_dir)[-1]["step"] == 10
    again = resexp("train", *RUN, "optim.lr=1e6", cwd=tmp_path)  # the same answer as the first time
    assert again.code == 1 and again.lines == [
        f"diverged: {run_dir} diverged at iteration 10 (training loss nan); delete the folder to train it again"
    ]


def test_sweep_goes_on_past_a_diverged_run_and_a_rerun_skips_both(tmp_path):
    sweep = ["-m", *RUN, "optim.lr=1e6,0.1", "hydra.sweep.subdir=lr${optim.lr}"]
    result = resexp("train", *sweep, cwd=tmp_path)
    assert result.code == 1 and "Error executing job" not in result.stderr
    statuses = {
        p.parent.name: json.loads(p.read_text())["status"] for p in (tmp_path / "runs/default").rglob("status.json")
    }
    assert statuses == {"lr1000000.0": "diverged", "lr0.1": "complete"}
    report = resexp("report", "runs/default", cwd=tmp_path)
    assert "lr1000000.0: diverged at iteration 10" in report.stdout
    again = resexp("train", *sweep, cwd=tmp_path)
    assert again.code == 1 and "lr1000000.0 diverged at iteration 10" in again.stderr
    assert "is complete already" in again.stderr


def test_rerunning_a_sweep_skips_complete_runs_and_resumes_interrupted_ones(tmp_path, reference, monkeypatch):
    signal_at(monkeypatch, 35, signal.SIGINT)
    assert resexp("train", *RUN, cwd=tmp_path).code == 130  # the residual run of the sweep, half way
    monkeypatch.undo()
    assert resexp("train", *RUN, "model.mode=plain", cwd=tmp_path).code == 0  # the plain run, complete
    result = resexp("train", "-m", *RUN, "model.mode=plain,residual", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert f"{folder(*RUN, 'model.mode=plain')} is complete already" in result.stderr and "resuming" in result.stderr
    assert without_time(rows(tmp_path / RUN_DIR)) == reference


# --------------------------------------------------------------------------- the lock


def test_a_run_directory_in_use_is_refused_and_a_stale_lock_is_taken_over(tmp_path, stopped):
    copy_runs(stopped, tmp_path)
    run_dir = tmp_path / RUN_DIR
    with RunLock(run_dir):  # another writer, alive
        result = resexp("train", *RUN, cwd=tmp_path)
        assert result.code == 1 and f"being written by another resexp process (pid {os.getpid()})" in result.stderr
    (run_dir / ".lock").write_text(str(os.getppid()))  # a pid that is alive, but holds no lock: stale
    assert resexp("train", *RUN, cwd=tmp_path).code == 0
    assert not (run_dir / ".lock").exists()


def test_no_space_for_the_lock_leaves_nothing(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "write", full)
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 1 and result.lines == ["error: No space left on device"]
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- a full disk


def test_full_disk_while_checkpointing_is_one_line_and_the_run_stays_resumable(tmp_path, reference, monkeypatch):
    real_save, calls = checkpoint.save, []

    def save_until_disk_is_full(run, state):
        calls.append(state["step"])
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(run.file("last.pt.tmp")))
        return real_save(run, state)

    monkeypatch.setattr(checkpoint, "save", save_until_disk_is_full)
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 1 and [line for line in result.lines if not line.startswith("[")] == [result.lines[-1]]
    assert result.lines[-1].startswith("error: No space left on device: ") and "at iteration 30" in result.stderr
    assert "run the same command again to resume" in result.stderr
    assert status(tmp_path)["status"] == "failed" and not list((tmp_path / RUN_DIR).glob("*.tmp"))
    assert checkpoints.load_latest(RunDir(tmp_path / RUN_DIR), print)["step"] == 20  # the last whole checkpoint
    monkeypatch.undo()
    assert resexp("train", *RUN, cwd=tmp_path).code == 0
    assert without_time(rows(tmp_path / RUN_DIR)) == reference


def test_a_checkpoint_that_fails_to_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    checkpoint.save(run, {"step": 1})

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError):
        checkpoint.save(run, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_torchs_error_for_a_full_disk_becomes_one_plain_line(tmp_path, monkeypatch):
    def full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 470")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 1 and result.lines[-1].startswith(
        f"error: could not write the checkpoint {RUN_DIR}/last.pt: no space left on device (0 MiB free) "
        "(at iteration 10;"
    )
    assert "enforce fail" not in result.stderr and not list((tmp_path / RUN_DIR).glob("*.tmp"))
    assert status(tmp_path)["status"] == "failed"


@pytest.mark.parametrize("hard_links", [True, False])
def test_last_checkpoint_is_never_absent_while_the_next_one_replaces_it(tmp_path, monkeypatch, hard_links):
    """A SIGKILL between two renames must not leave a run without last.pt; on a filesystem
    without hard links the old last.pt is copied to prev.pt instead."""
    if not hard_links:

        def no_link(src, dst):
            raise OSError(1, "Operation not permitted")

        monkeypatch.setattr(checkpoint.os, "link", no_link)

    real_replace, seen = os.replace, []

    def replace(src, dst):
        seen.append((tmp_path / "last.pt").exists())
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    run = RunDir(tmp_path)
    checkpoint.save(run, {"step": 1})
    seen.clear()
    checkpoint.save(run, {"step": 2})
    assert seen and all(seen)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2
    assert torch.load(tmp_path / "prev.pt", weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]


# --------------------------------------------------------------------------- resume=PATH


def test_resume_from_a_given_checkpoint_starts_at_its_step(tmp_path, stopped):
    copy_runs(stopped, tmp_path)
    source = tmp_path / "kept.pt"
    source.write_bytes((tmp_path / RUN_DIR / "last.pt").read_bytes())
    result = resexp("train", *RUN, "name=branch", f"resume={source}", cwd=tmp_path)
    assert result.code == 0, result.stderr
    branch = rows(tmp_path / folder(*RUN, "name=branch"))
    assert [r["step"] for r in branch] == [40, 50, 60]


def test_a_run_started_from_a_checkpoint_resumes_from_its_own_after_an_interrupt(tmp_path, monkeypatch):
    signal_at(monkeypatch, 15, signal.SIGINT)
    resexp("train", *RUN, cwd=tmp_path)  # a checkpoint at 15
    source = tmp_path / "kept.pt"
    source.write_bytes((tmp_path / RUN_DIR / "last.pt").read_bytes())
    monkeypatch.undo()
    signal_at(monkeypatch, 20, signal.SIGINT)  # the branch is interrupted at 15 + 20 = 35
    branch = ["name=branch", f"resume={source}"]
    assert resexp("train", *RUN, *branch, cwd=tmp_path).code == 130
    monkeypatch.undo()
    again = resexp("train", *RUN, *branch, cwd=tmp_path)  # "run the same command again to resume"
    assert again.code == 0 and "has a checkpoint of its own (iteration 35): resuming from it" in again.stderr
    assert [r["step"] for r in rows(tmp_path / folder(*RUN, "name=branch"))] == [20, 30, 40, 50, 60]


def test_a_checkpoint_of_resexp_0_1_still_resumes_exactly(tmp_path, stopped, reference):
    """0.1 stored numpy's RNG state as an array; loading it must not need weights_only=False."""
    copy_runs(stopped, tmp_path)
    last = tmp_path / RUN_DIR / "last.pt"
    saved = torch.load(last, weights_only=True)
    kind, keys, position, has_gauss, cached = saved["rng"]["numpy"]
    saved["rng"]["numpy"] = (kind, keys.numpy().astype("uint32"), position, has_gauss, cached)  # as 0.1 wrote it
    torch.save(saved, last)
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.code == 0 and "resuming" in result.stderr, result.stderr
    assert without_time(rows(tmp_path / RUN_DIR)) == reference


@pytest.mark.parametrize(
    "content,message",
    [
        ({"weights": torch.zeros(2)}, "is not a resexp checkpoint (it lacks model, model_fields, optimizer"),
        (torch.zeros(3), "is not a resexp checkpoint"),
        (b"not a zip file at all", "is not a readable checkpoint"),
        ("pickled-object", "is not a readable checkpoint (UnpicklingError)"),
    ],
)
def test_a_file_that_is_not_a_resexp_checkpoint_is_one_line(tmp_path, content, message):
    path = tmp_path / "other.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickled-object":
        torch.save({"model": object.__new__(RunLock)}, path)  # loading it would run code: refused
    else:
        torch.save(content, path)
    result = resexp("train", *RUN, f"resume={path}", cwd=tmp_path)
    assert result.code == 1 and len(result.lines) == 1 and message in result.stderr, result.stderr
    assert leftovers(tmp_path) == ["other.pt"]


def test_checkpoint_of_another_model_is_refused(tmp_path, monkeypatch):
    signal_at(monkeypatch, 15, signal.SIGINT)
    resexp("train", *RUN, cwd=tmp_path)
    monkeypatch.undo()
    result = resexp("train", *RUN, "model.depth=14", f"resume={tmp_path / RUN_DIR / 'last.pt'}", cwd=tmp_path)
    assert result.code == 1 and "was made for another model (model.depth: 8 vs 14)" in result.stderr
    assert not (tmp_path / "runs/default/synthetic/residual-14A_s0").exists()


# --------------------------------------------------------------------------- data identity


def test_the_same_command_on_other_data_is_refused_and_on_a_copy_accepted(tmp_path):
    small = ["data.batch_size=16", "model.depth=8", "schedule.iterations=8", "eval_every=4", "device=cpu"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "copy").mkdir()
    write_npz(tmp_path / "a" / "cifar10.npz")
    write_npz(tmp_path / "b" / "cifar10.npz", n_train=80)
    (tmp_path / "copy" / "cifar10.npz").write_bytes((tmp_path / "a" / "cifar10.npz").read_bytes())
    assert resexp("train", "data.root=a", *small, cwd=tmp_path).code == 0
    other = resexp("train", "data.root=b", *small, cwd=tmp_path)
    assert other.code == 1 and "holds a run of other data: it was trained on cifar10.npz" in other.stderr
    copy = resexp("train", "data.root=copy", *small, cwd=tmp_path)
    assert copy.code == 0 and "complete already" in copy.stderr
    wrong = resexp("train", "data=cifar100", "data.root=a", "data.file=cifar10.npz", "name=c100", *small, cwd=tmp_path)
    assert wrong.code == 1 and "it holds 10 classes, not the 100 of this dataset" in wrong.stderr
    assert not (tmp_path / "runs/c100").exists()


def test_output_directory_that_cannot_be_made(tmp_path):
    (tmp_path / "blocked").write_text("a file where a folder should be")
    result = resexp("train", *RUN, "hydra.run.dir=blocked/run", cwd=tmp_path)
    assert result.code == 1 and len(result.lines) == 1 and "blocked" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_directory(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    result = resexp("train", *RUN, "hydra.run.dir=ro/run", cwd=tmp_path)
    assert result.code == 1 and "Permission denied" in result.stderr and len(result.lines) == 1
