"""End to end through the CLI's entry point, in-process: a few-iteration run writes a
self-describing run directory (metrics.jsonl, TensorBoard scalars, config, data identity,
environment, checkpoint); a -m sweep makes one run directory per combination; ImageNet folders;
evaluation over crops; the joblib launcher."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, TINY_DIR, folder, fresh_joblib_workers, leftovers, only_run, process_env, resexp, rows
from resexp.run.evaluate import evaluate
from resexp.run.hparams import names
from resexp.run.speed import cpu_has_bf16

KEYS = {"step", "epoch", "lr", "train/loss", "train/error", "test/loss", "test/error", "time"}
TAGS = {"train/loss", "train/error", "test/loss", "test/error", "lr"}


def events(run_dir):
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc


def scalars(run_dir):
    acc = events(run_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_writes_metrics_tensorboard_and_a_self_describing_run_dir(tiny_run):
    run_dir, outcome = tiny_run
    metrics = rows(run_dir)
    assert [r["step"] for r in metrics] == [8, 16] and all(set(r) == KEYS for r in metrics)
    assert metrics[0]["lr"] == 0.1 and metrics[1]["lr"] == pytest.approx(0.001)  # milestones at 8 and 12 of 16
    assert all(0 <= r["train/error"] <= 100 and 0 <= r["test/error"] <= 100 for r in metrics)
    assert metrics[1]["epoch"] == pytest.approx(16 / (256 // 32))
    tb = scalars(run_dir)
    assert TAGS <= set(tb)
    assert tb["test/error"] == [(r["step"], pytest.approx(r["test/error"], abs=1e-4)) for r in metrics]
    # HParams tab: this run's hyperparameters, in its own directory, with final/best errors as metrics.
    assert tb["final/test_error"][-1][1] == pytest.approx(metrics[-1]["test/error"], abs=1e-4)
    assert tb["best/train_error"][-1][1] == pytest.approx(min(r["train/error"] for r in metrics), abs=1e-4)
    acc = events(run_dir)
    start_info = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"residual" in start_info and b"synthetic" in start_info
    [tag] = acc.PluginTagToContent("custom_scalars")
    layout = acc.Tensors(tag)[0].tensor_proto.string_val[0]
    assert b"^train/error$" in layout and b"^test/error$" in layout
    assert [p.name for p in run_dir.iterdir() if p.is_dir()] == []  # no extra TensorBoard runs
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == {
        **{"family": "cifar", "depth": 8, "mode": "residual", "shortcut": "A", "sync_bn": False},
        **{"norm": "batch", "init": "he", "block": "post", "body": None},
    }
    assert config["schedule"]["milestones"] == [8, 12]  # the run records the milestones it used
    assert json.loads((run_dir / "data.json").read_text())["name"] == "synthetic"
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    expected = "bf16" if cpu_has_bf16() else "fp32"  # speed.precision=auto on this CPU
    assert env["speed"]["precision"] == expected and env["speed"]["channels_last"] == (expected == "bf16")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == 16 and "optimizer" in state and "rng" in state
    assert outcome.stderr.count("test/error") == 2  # one console line per evaluation
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("events")) == [
        "best.pt",  # a hard link to the checkpoint of the lowest test error
        "config.yaml",
        "data.json",
        "environment.json",
        "last.pt",
        "metrics.jsonl",
        "prev.pt",
        "status.json",
    ]


def test_a_plain_run_has_no_shortcut_in_its_name_and_trains(tmp_path):
    outcome = resexp("train", *TINY, "model.mode=plain", cwd=tmp_path)
    assert outcome.code == 0, outcome.stderr
    run_dir = tmp_path / folder(*TINY, "model.mode=plain")
    assert run_dir.name.startswith("plain-8_s0+")
    from tensorboard.plugins.hparams import metadata

    start = metadata.parse_session_start_info_plugin_data(
        events(run_dir).PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
    )
    values = {name: v.string_value or v.number_value for name, v in start.hparams.items()}
    assert values["00 mode"] == "plain" and values["02 shortcut"] == "-"
    assert values[names()["run"][0]].startswith("plain-8 s0")
    assert rows(run_dir)[-1]["train/error"] < 90


def test_sweep_runs_every_combination_into_its_own_directory_and_a_rerun_skips_them(tmp_path):
    short = [*TINY, "schedule.iterations=8"]  # one evaluation each: four runs, then four skipped
    result = resexp("train", "-m", *short, "model.mode=plain,residual", "seed=0,1", cwd=tmp_path)
    assert result.code == 0, result.stderr
    runs = sorted(p.parent.name.split("+")[0] for p in (tmp_path / "runs/default").rglob("metrics.jsonl"))
    assert runs == ["plain-8_s0", "plain-8_s1", "residual-8A_s0", "residual-8A_s1"]
    plain = [tmp_path / folder(*short, "model.mode=plain", f"seed={seed}") for seed in (0, 1)]
    assert rows(plain[1]) != rows(plain[0])
    again = resexp("train", "-m", *short, "model.mode=plain,residual", "seed=0,1", cwd=tmp_path)
    assert again.code == 0 and again.stderr.count("complete already") == 4


def test_same_directory_with_another_config_is_refused(tiny_run, tmp_path):
    cwd = tiny_run[0].parents[3]
    result = resexp("train", *TINY, "optim.lr=0.05", f"hydra.run.dir={TINY_DIR}", cwd=cwd)
    assert result.code == 1 and "optim.lr: 0.1 -> 0.05" in result.stderr and "name=" in result.stderr
    assert len(result.lines) == 1


def test_missing_dataset_says_how_to_get_it(tmp_path):
    result = resexp("train", "data.root=nowhere", "device=cpu", cwd=tmp_path)
    assert result.code == 1 and "data.download=true" in result.stderr and "needs internet" in result.stderr
    assert not list(tmp_path.iterdir())


def test_evaluation_averages_the_probabilities_of_the_crops():
    """Nine crops lean to class 1, one is sure of class 0: averaged probabilities say 1 (p = 0.560),
    averaged logits would say 0. The net is the identity: the inputs are the crops' logits."""
    crops = torch.tensor([[0.0, 0.5]] * 9 + [[20.0, 0.0]])  # (10 crops, 2 classes)
    x = crops.view(1, 10, 2, 1, 1)
    net = torch.nn.Flatten()
    out = evaluate(net, [(x, torch.tensor([1]))], "test")
    assert out["test/error"] == 0.0
    assert out["test/loss"] == pytest.approx(0.5794, abs=1e-3)  # -log(0.9 * sigmoid(0.5))
    assert evaluate(net, [(x, torch.tensor([0]))], "test")["test/error"] == 100.0


def test_imagenet_folder_pipeline_with_scale_augmentation_and_ten_crop(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("val", 2)):
        for cls in ("n01", "n02"):
            folder = tmp_path / "imagenet" / part / cls
            folder.mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(70, 120)), int(rng.integers(70, 120)))
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    result = resexp(
        "train",
        "model=imagenet",
        "model.depth=18",
        "data=imagenet",
        f"data.root={tmp_path / 'imagenet'}",
        "data.batch_size=4",
        "data.eval_batch_size=2",
        "data.workers=0",
        "data.scale_min=64",
        "data.scale_max=96",
        "data.crop_size=56",
        "data.ten_crop=true",
        "schedule=plateau",
        "schedule.iterations=4",
        "eval_every=2",
        "device=cpu",
        cwd=tmp_path,
    )
    assert result.code == 0, result.stderr
    run_dir = only_run(tmp_path / "runs/default/imagenet")
    assert run_dir.name.startswith("residual-18A_s0+model-imagenet+")
    metrics = rows(run_dir)
    assert [r["step"] for r in metrics] == [2, 4] and metrics[0]["epoch"] == pytest.approx(2 / 3)
    assert all(r["test/error"] in (0.0, 25.0, 50.0, 75.0, 100.0) for r in metrics)  # 4 val images
    data = json.loads((run_dir / "data.json").read_text())
    assert data["source"] == "imagenet/" and len(data["fingerprint"]) == 16


def test_scale_augmentation_samples_the_shorter_side_in_its_range(tmp_path):
    from PIL import Image

    from resexp.config import DataConfig
    from resexp.data.imagenet import transforms

    cfg = DataConfig(scale_min=40, scale_max=48, crop_size=32)
    resize = transforms(cfg, train=True).transforms[0]
    sides = {min(resize(Image.new("RGB", (100, 60))).size) for _ in range(200)}
    assert sides <= set(range(40, 49)) and len(sides) >= 6


def test_missing_imagenet_says_it_cannot_be_downloaded(tmp_path):
    result = resexp(
        "train",
        "model=imagenet",
        "data=imagenet",
        f"data.root={tmp_path}",
        "device=cpu",
        "data.batch_size=8",
        cwd=tmp_path,
    )
    assert result.code == 1 and "ImageFolder layout" in result.stderr and "cannot be downloaded" in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    from resexp.errors import ConfigError

    with pytest.raises(ConfigError, match="model.depth=21"):
        resexp("train", "--debug", *TINY, "model.depth=21", cwd=tmp_path)


def test_a_joblib_sweep_shares_the_cores_and_names_each_run_that_did_not_finish(tmp_path, capfd):
    """joblib runs each job in a worker process: the task must pickle, and each job gets its share
    of the cores. With a launcher that runs the jobs in other processes (joblib here, submitit on a
    cluster, whose jobs write their lines into log files), the command itself names each run that
    did not finish and why (before: a submitit sweep whose jobs all diverged exited 1, saying nothing)."""
    fresh_joblib_workers()
    args = [*TINY, "optim.lr=0.1,1e6", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = resexp("train", "-m", *args, cwd=tmp_path)
    assert result.code == 1
    envs = [json.loads(p.read_text()) for p in (tmp_path / "runs/default").rglob("environment.json")]
    assert len(envs) == 2 and all(e["cpu_threads"] == max(1, (os.cpu_count() or 1) // 2) for e in envs)
    assert json.loads((tmp_path / TINY_DIR / "status.json").read_text())["status"] == "complete"
    ours = [line for line in result.lines if line.startswith("error: runs/")]
    assert [line.split(":")[1].strip() for line in ours] == [folder(*TINY, "optim.lr=1e6")]
    assert all("diverged at iteration 8 (training loss is " in line for line in ours), ours
    # the runs train side by side on one console: each of their lines starts with its run's name
    evaluations = [line for line in capfd.readouterr().err.splitlines() if "[ 8/16]" in line]
    names = {Path(TINY_DIR).name, Path(folder(*TINY, "optim.lr=1e6")).name}
    assert len(evaluations) == 2 and {line.split("  [")[0] for line in evaluations} == names, evaluations


@pytest.mark.slow  # 17 s of processes; default suite: the joblib sweep, a launcher reporting a signalled job
def test_a_submitit_sweep_interrupted_by_ctrl_c_resumes_when_run_again(tmp_path):
    """hydra/launcher=submitit_local runs each job through submitit in its own process, as
    submitit_slurm does on a cluster. Ctrl-C (SIGINT to the terminal's process group) while the
    jobs train: each saves a checkpoint, the command says how to resume; the same command again
    finishes both runs, going on from their checkpoints."""
    sweep = [
        "train",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",  # two jobs side by side on two cores: one thread each
        "data=synthetic",
        "data.train_size=256",
        "data.test_size=64",
        "model.depth=8",
        "schedule.iterations=60",
        "eval_every=10",
        "device=cpu",
        "seed=0,1",
    ]
    runs = [tmp_path / folder(*sweep[4:-1], f"seed={seed}") for seed in (0, 1)]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "resexp", *sweep],
        cwd=tmp_path,
        env=process_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not all((run / "last.pt").exists() for run in runs):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGINT)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err
    assert "interrupted: 2 job(s) of the sweep had started" in err and "run the same command again" in err
    stopped = [json.loads((run / "status.json").read_text()) for run in runs]
    assert [s["status"] for s in stopped] == ["interrupted", "interrupted"] and all(s["step"] < 60 for s in stopped)
    again = resexp(*sweep, cwd=tmp_path)  # the controller in this process; submitit starts the jobs' own
    assert again.code == 0, again.stderr
    for run in runs:
        assert json.loads((run / "status.json").read_text())["status"] == "complete"
        assert [r["step"] for r in rows(run)] == list(range(10, 61, 10))  # each evaluation once
        assert json.loads((run / "environment.json").read_text())["cpu_threads"] == 1
    logs = "".join(p.read_text() for p in (tmp_path / "runs/default/.submitit").rglob("*_log.err"))
    for run, before in zip(runs, stopped, strict=True):
        assert f"resuming runs/default/synthetic/{run.name} from iteration {before['step']}" in logs


@pytest.mark.slow
def test_short_run_on_real_cifar10(tmp_path, cifar_npz):
    args = (f"data.root={cifar_npz.parent}", "schedule.iterations=60", "eval_every=30", "device=cpu")
    result = resexp("train", *args, cwd=tmp_path)
    assert result.code == 0, result.stderr
    metrics = rows(tmp_path / folder(*args))
    assert [r["step"] for r in metrics] == [30, 60]
    assert metrics[-1]["train/error"] < 85 and metrics[-1]["test/error"] < 85  # learning: chance is 90


def test_a_launcher_reporting_a_signalled_job_as_failed_reads_as_an_interrupted_sweep(tmp_path, monkeypatch):
    """submitit may report a job that Ctrl-C stopped as a failed job (an exception) before its
    own process sees the Ctrl-C: the command still says the sweep was interrupted, exit 130. An
    exception with no job stopped by a signal since the command began names the runs left."""
    import contextlib

    from resexp.launch import jobs as launch
    from resexp.rundir.folder import RunDir

    def launcher_that_fails(stopped: bool):
        class App:
            def multirun(self, *args):
                if stopped:
                    run_dir = RunDir(tmp_path / folder(*TINY, "seed=1"))
                    run_dir.path.mkdir(parents=True)
                    run_dir.set_status("interrupted", 3, 16, signal="SIGINT")
                raise RuntimeError("FailedJobError: job 1 failed")

        @contextlib.contextmanager
        def app():
            yield App()

        return app

    monkeypatch.setattr(launch, "hydra_app", launcher_that_fails(stopped=True))
    out = resexp("train", "-m", *TINY, "seed=0,1", cwd=tmp_path)
    assert out.code == 130 and "interrupted: 1 job(s) of the sweep had started" in out.stderr
    monkeypatch.setattr(launch, "hydra_app", launcher_that_fails(stopped=False))
    (tmp_path / "b").mkdir()
    out = resexp("train", "-m", *TINY, "seed=0,1", cwd=tmp_path / "b")
    assert out.code == 1 and out.lines == [
        "error: the launcher stopped (RuntimeError: FailedJobError: job 1 failed); 2 run(s) did not finish: "
        f"{folder(*TINY, 'seed=0')}, {folder(*TINY, 'seed=1')}; none of them had started"
    ]


def test_a_run_folder_that_cannot_be_made_is_one_line_that_promises_no_resume(tmp_path):
    """Before: "... the same command again resumes them from their last checkpoints": it never will."""
    out = resexp("train", *TINY, "hydra.run.dir=/proc/resexp-cannot/run", cwd=tmp_path)
    assert out.code == 1 and len(out.lines) == 1, out.stderr
    assert "No such file or directory" in out.lines[0] and "none of them had started" in out.lines[0]
    assert "resumes" not in out.lines[0] and leftovers(tmp_path) == []


def test_a_failure_before_the_first_checkpoint_does_not_claim_one(tmp_path, monkeypatch):
    """Before: 'X keeps its last checkpoint' for a run that had none."""
    from resexp.run import loop as train

    def broken(*args):
        def step(x, y, lr):
            raise OSError(5, "Input/output error")

        return step

    monkeypatch.setattr(train, "make_step", broken)
    result = resexp("train", *TINY, cwd=tmp_path)
    assert result.code == 1 and result.lines == [
        f"error: Input/output error (at iteration 0; {TINY_DIR} has no checkpoint yet: the same command starts it "
        "again)"
    ]


def test_tensorboards_hparams_table_shows_what_the_sweep_varies(tmp_path):
    """The sweep's folder declares the experiment: mode, depth, shortcut and seed first, then the
    fields its runs vary (here the learning rate), then the run's short name, then the constant
    ones, as TensorBoard orders them (differing first, then by name; it ticks the first five); the
    metrics are the final and best errors. Each run declares its values under the same names."""
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

    result = resexp("train", "-m", *TINY, "model.mode=plain,residual", "optim.lr=0.1,0.05", cwd=tmp_path)
    assert result.code == 0, result.stderr
    acc = events(tmp_path / "runs/default")
    [experiment] = [
        metadata.parse_experiment_plugin_data(c)
        for t, c in acc.PluginTagToContent("hparams").items()
        if t == metadata.EXPERIMENT_TAG
    ]
    _sort_and_reduce_to_hparams_limit(experiment)  # what TensorBoard's backend does
    shown = [(h.display_name, h.differs) for h in experiment.hparam_infos]
    assert shown[:6] == [
        ("mode", True),
        ("depth", True),
        ("shortcut", True),
        ("seed", True),
        ("lr", True),  # the fifth: ticked without a click
        ("run", True),
    ]
    assert not any(differs for _, differs in shown[6:]) and "momentum" in dict(shown)
    assert [m.name.tag for m in experiment.metric_infos] == [
        "final/test_error",
        "final/train_error",
        "best/test_error",
        "best/train_error",
    ]
    run_dir = tmp_path / folder(*TINY, "model.mode=plain", "optim.lr=0.05")
    start = metadata.parse_session_start_info_plugin_data(
        events(run_dir).PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
    )
    values = {name: v.string_value or v.number_value for name, v in start.hparams.items()}
    assert values["00 mode"] == "plain" and values["02 shortcut"] == "-" and values["01 depth"] == 8
    run = values[names()["run"][0]]
    assert run == "plain-8 s0 " + run_dir.name.partition("+")[2] and "lr-0.05" in run
