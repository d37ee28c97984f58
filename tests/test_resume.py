"""Crash safety by fault injection: SIGKILL and resume, SIGINT, a truncated checkpoint, a NaN,
resumable sweeps, and the bad inputs of issue 4, each with its exact outcome."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import resexp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

RUN = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.depth=8", "schedule.iterations=200",
       "schedule.milestones=[100]", "eval_every=20", "device=cpu"]
RUN_DIR = "runs/default/synthetic/residual-8A_s0"


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_time(metrics):
    return [{k: v for k, v in r.items() if k != "time"} for r in metrics]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The metrics of an uninterrupted run."""
    cwd = tmp_path_factory.mktemp("reference")
    result = resexp("train", *RUN, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return without_time(rows(cwd / RUN_DIR))


def start(cwd, *extra):
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "resexp.cli", "train", *RUN, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(cwd, n, proc, timeout=120):
    path = cwd / RUN_DIR / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the run did not get going")


def tensorboard_steps(run_dir, tag="test/error"):
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.mark.parametrize("after_rows,extra_delay", [(2, 0.0), (3, 0.05), (5, 0.13)])
def test_sigkill_anywhere_then_rerun_gives_identical_metrics(tmp_path, reference, after_rows, extra_delay):
    proc = start(tmp_path)
    wait_for_rows(tmp_path, after_rows, proc)
    time.sleep(extra_delay)
    proc.kill()
    proc.wait()
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    run_dir = tmp_path / RUN_DIR
    assert without_time(rows(run_dir)) == reference
    assert tensorboard_steps(run_dir) == [r["step"] for r in reference]  # no step counted twice
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"


def test_sigint_saves_mid_interval_and_resume_is_exact(tmp_path, reference):
    proc = start(tmp_path)
    wait_for_rows(tmp_path, 2, proc)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "SIGINT at iteration" in stderr and "run the same command again to resume" in stderr
    run_dir = tmp_path / RUN_DIR
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] >= 40
    assert resexp("train", *RUN, cwd=tmp_path).returncode == 0
    assert without_time(rows(run_dir)) == reference


def test_sigterm_is_handled_like_preemption(tmp_path):
    proc = start(tmp_path)
    wait_for_rows(tmp_path, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "SIGTERM at iteration" in stderr
    assert (tmp_path / RUN_DIR / "last.pt").exists()


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    proc = start(tmp_path)
    wait_for_rows(tmp_path, 4, proc)
    proc.kill()
    proc.wait()
    last = tmp_path / RUN_DIR / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is not a readable checkpoint" in result.stderr and "previous checkpoint" in result.stderr
    assert without_time(rows(tmp_path / RUN_DIR)) == reference


def test_nan_loss_stops_the_run_and_marks_it_diverged(tmp_path):
    result = resexp("train", *RUN, "optim.lr=1e6", cwd=tmp_path)
    assert result.returncode == 1
    assert "diverged: training loss is nan at iteration 20" in result.stderr.lower()
    run_dir = tmp_path / RUN_DIR
    assert json.loads((run_dir / "status.json").read_text())["status"] == "diverged"
    assert rows(run_dir)[-1]["diverged"] is True and rows(run_dir)[-1]["step"] == 20


def test_sweep_goes_on_past_a_diverged_run_and_resumes_where_it_stopped(tmp_path):
    sweep = ["-m", *RUN, "optim.lr=1e6,0.1", "hydra.sweep.subdir=lr${optim.lr}"]
    result = resexp("train", *sweep, cwd=tmp_path)
    assert result.returncode == 1
    statuses = {p.parent.name: json.loads(p.read_text())["status"]
                for p in (tmp_path / "runs/default").rglob("status.json")}
    assert statuses == {"lr1000000.0": "diverged", "lr0.1": "complete"}
    report = resexp("report", "runs/default", cwd=tmp_path)
    assert "lr1000000.0: diverged at iteration 20" in report.stdout
    again = resexp("train", *sweep, cwd=tmp_path)
    assert again.returncode == 0 and "is diverged already" in again.stderr and "is complete already" in again.stderr


def test_rerunning_a_sweep_skips_complete_runs_and_resumes_interrupted_ones(tmp_path, reference):
    proc = start(tmp_path)  # the residual run of the sweep, killed half way
    wait_for_rows(tmp_path, 3, proc)
    proc.kill()
    proc.wait()
    assert resexp("train", *RUN, "model.mode=plain", cwd=tmp_path).returncode == 0  # the plain run, complete
    result = resexp("train", "-m", *RUN, "model.mode=plain,residual", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "plain-8_s0 is complete already" in result.stderr and "resuming" in result.stderr
    assert without_time(rows(tmp_path / RUN_DIR)) == reference


def test_a_run_directory_in_use_by_a_live_process_is_refused_and_a_stale_lock_is_taken(tmp_path):
    run_dir = tmp_path / RUN_DIR
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text(str(os.getpid()))  # this test process is alive
    result = resexp("train", *RUN, cwd=tmp_path)
    assert result.returncode == 1 and "being written by another resexp process" in result.stderr
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run_dir / ".lock").write_text(str(dead.pid))
    assert resexp("train", *RUN, cwd=tmp_path).returncode == 0
    assert not (run_dir / ".lock").exists()


def test_checkpoint_of_another_model_is_refused(tmp_path):
    assert resexp("train", *RUN, cwd=tmp_path).returncode == 0
    result = resexp("train", *RUN, "model.depth=14", f"resume={tmp_path / RUN_DIR / 'last.pt'}", cwd=tmp_path)
    assert result.returncode == 1
    assert "was made for another model (model.depth: 8 vs 14)" in result.stderr


def test_output_directory_that_cannot_be_made(tmp_path):
    (tmp_path / "blocked").write_text("a file where a folder should be")
    result = resexp("train", *RUN, "hydra.run.dir=blocked/run", cwd=tmp_path)
    assert result.returncode == 1 and "blocked" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_directory(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    result = resexp("train", *RUN, "hydra.run.dir=ro/run", cwd=tmp_path)
    assert result.returncode == 1 and "Permission denied" in result.stderr and "Traceback" not in result.stderr


def test_broken_data_file_is_one_line(tmp_path):
    np.savez(tmp_path / "cifar10.npz", x_train=np.zeros((10, 32, 32, 3), np.uint8), y_train=np.full(10, 12),
             x_test=np.zeros((5, 32, 32, 3), np.uint8), y_test=np.zeros(5))
    result = resexp("train", f"data.root={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1 and "labels in [12, 12]; expected 0..9" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import errno

    from typer.testing import CliRunner

    from resexp import checkpoint
    from resexp.cli import app

    real_save, calls = checkpoint.save, []

    def save_until_disk_is_full(run_dir, state):
        calls.append(state["step"])
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "last.pt.tmp"))
        return real_save(run_dir, state)

    monkeypatch.setattr(checkpoint, "save", save_until_disk_is_full)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    result = CliRunner().invoke(app, ["train", *RUN])
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "Traceback" not in result.output
    saved = checkpoint.load_latest(tmp_path / RUN_DIR)
    assert saved["step"] == 40  # the last checkpoint that was written whole


@pytest.mark.parametrize("hard_links", [True, False])
def test_last_checkpoint_is_never_absent_while_the_next_one_replaces_it(tmp_path, monkeypatch, hard_links):
    """A SIGKILL between two renames must not leave a run without last.pt (CI once caught that window);
    on a filesystem without hard links the old last.pt is copied to prev.pt instead."""
    from resexp import checkpoint

    if not hard_links:
        def no_link(src, dst):
            raise OSError(1, "Operation not permitted")

        monkeypatch.setattr(checkpoint.os, "link", no_link)

    real_replace, seen = os.replace, []

    def replace(src, dst):
        seen.append((tmp_path / "last.pt").exists())
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    checkpoint.save(tmp_path, {"step": 1})
    seen.clear()
    checkpoint.save(tmp_path, {"step": 2})
    assert seen and all(seen)
    assert checkpoint.load_file(tmp_path / "last.pt")["step"] == 2
    assert checkpoint.load_file(tmp_path / "prev.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]


def test_first_signal_asks_the_loop_to_stop_and_the_second_aborts_at_once():
    from resexp.train import StopSignals

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN under nohup
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGINT) == stop.handle and signal.getsignal(signal.SIGTERM) == stop.handle
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored


def test_resume_from_a_given_checkpoint_starts_at_its_step(tmp_path):
    proc = start(tmp_path)
    wait_for_rows(tmp_path, 3, proc)
    proc.kill()
    proc.wait()
    source = tmp_path / "kept.pt"
    source.write_bytes((tmp_path / RUN_DIR / "last.pt").read_bytes())
    step = __import__("torch").load(source, weights_only=False)["step"]
    result = resexp("train", *RUN, "name=branch", f"resume={source}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    branch = rows(tmp_path / "runs/branch/synthetic/residual-8A_s0")
    assert branch[0]["step"] == (step // 20 + 1) * 20 and branch[-1]["step"] == 200
