"""End to end through the real CLI: a few-iteration run writes a self-describing run directory
(metrics.jsonl, TensorBoard scalars, config, environment, checkpoint); a -m sweep makes one run
directory per combination; mistakes end in one line and leave nothing behind."""

import json

import pytest
import torch
import yaml
from conftest import TINY, resexp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resexp.train import evaluate

KEYS = {"step", "epoch", "lr", "train/loss", "train/error", "test/loss", "test/error", "time"}
TAGS = {"train/loss", "train/error", "test/loss", "test/error", "lr"}


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def events(run_dir):
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc


def scalars(run_dir):
    acc = events(run_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_writes_metrics_tensorboard_and_a_self_describing_run_dir(tmp_path):
    result = resexp("train", *TINY, "model.mode=plain", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs/default/synthetic/plain-8_s0"
    metrics = rows(run_dir)
    assert [r["step"] for r in metrics] == [8, 16] and all(set(r) == KEYS for r in metrics)
    assert metrics[0]["lr"] == 0.1 and metrics[1]["lr"] == pytest.approx(0.01)
    assert all(0 <= r["train/error"] <= 100 and 0 <= r["test/error"] <= 100 for r in metrics)
    assert metrics[1]["epoch"] == pytest.approx(16 / (256 // 32))
    tb = scalars(run_dir)
    assert TAGS <= set(tb)
    assert tb["test/error"] == [(r["step"], pytest.approx(r["test/error"], abs=1e-4)) for r in metrics]
    # HParams tab: this run's hyperparameters, in its own directory, with final/best errors as metrics.
    assert tb["final/test_error"][-1][1] == pytest.approx(metrics[-1]["test/error"], abs=1e-4)
    assert tb["best/train_error"][-1][1] == pytest.approx(min(r["train/error"] for r in metrics), abs=1e-4)
    acc = events(run_dir)
    hparams = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    assert b"residual" not in hparams["_hparams_/session_start_info"] and b"plain" in hparams["_hparams_/session_start_info"]
    [tag] = acc.PluginTagToContent("custom_scalars")
    layout = acc.Tensors(tag)[0].tensor_proto.string_val[0]
    assert b"^train/error$" in layout and b"^test/error$" in layout
    assert [p.name for p in run_dir.iterdir() if p.is_dir()] == []  # no extra TensorBoard runs
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == {"family": "cifar", "depth": 8, "mode": "plain", "shortcut": "A"}
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["step"] == 16 and "optimizer" in state and "rng" in state
    assert "test/error" in result.stderr  # one console line per evaluation


def test_sweep_runs_every_combination_into_its_own_directory(tmp_path):
    result = resexp("train", "-m", *TINY, "model.mode=plain,residual", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = sorted(p.parent.name for p in (tmp_path / "runs/default").rglob("metrics.jsonl"))
    assert runs == ["plain-8_s0", "residual-8A_s0"]
    for run in runs:
        assert len(rows(tmp_path / "runs/default/synthetic" / run)) == 2
    # Re-running the sweep skips the completed runs instead of overwriting them.
    again = resexp("train", "-m", *TINY, "model.mode=plain,residual", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr.count("complete already") == 2


@pytest.mark.parametrize("override,message", [
    ("model.depth=21", "model.depth=21 is not a CIFAR depth: valid depths are 6n+2"),
    ("model.mode=highway", "expected one of [plain, residual]"),
    ("model.colour=red", "Key 'colour' not in 'ModelConfig' (valid keys: family, depth, mode, shortcut)"),
    ("data=mnist", "available: cifar10, cifar100, imagenet, synthetic"),
    ("schedule.milestones=[100]", "must lie inside the schedule"),
    ("speed.cuda_graph=true", "speed.cuda_graph=true needs a CUDA device, not cpu")])
def test_mistakes_end_in_one_line_and_leave_no_run_directory(tmp_path, override, message):
    result = resexp("train", *TINY, override, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.json*"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


def test_missing_dataset_says_how_to_get_it(tmp_path):
    result = resexp("train", "data.root=nowhere", cwd=tmp_path)
    assert result.returncode == 1 and "data.download=true" in result.stderr and "needs internet" in result.stderr


def test_same_directory_with_another_config_is_refused(tmp_path):
    assert resexp("train", *TINY, cwd=tmp_path).returncode == 0
    result = resexp("train", *TINY, "optim.lr=0.05", cwd=tmp_path)
    assert result.returncode == 1 and "optim.lr: 0.1 -> 0.05" in result.stderr and "name=" in result.stderr
    assert resexp("train", *TINY, "optim.lr=0.05", "name=lower_lr", cwd=tmp_path).returncode == 0


def test_ten_crop_evaluation_averages_crop_probabilities():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.randn(4, 10, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 0])
    out = evaluate(net, [(x, y)], "test")
    probs = net(x.flatten(0, 1)).softmax(-1).view(4, 10, 3).mean(1)
    assert out["test/error"] == pytest.approx(100 * (probs.argmax(1) != y).float().mean().item())
    assert out["test/loss"] == pytest.approx(-probs[torch.arange(4), y].log().mean().item(), rel=1e-5)


@pytest.mark.slow
def test_short_run_on_real_cifar10(tmp_path, cifar_npz):
    result = resexp("train", f"data.root={cifar_npz.parent}", "schedule.iterations=60", "schedule.milestones=[40]",
                    "eval_every=30", "device=cpu", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    metrics = rows(tmp_path / "runs/default/cifar10/residual-20A_s0")
    assert [r["step"] for r in metrics] == [30, 60]
    assert metrics[-1]["train/error"] < 85 and metrics[-1]["test/error"] < 85  # learning: chance is 90


def test_parallel_sweep_through_the_joblib_launcher_shares_the_cores(tmp_path):
    result = resexp("train", "-m", *TINY, "model.mode=plain,residual", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stderr + result.stdout
    envs = [json.loads(p.read_text()) for p in (tmp_path / "runs/default").rglob("environment.json")]
    assert len(envs) == 2
    cores = __import__("os").cpu_count()
    assert all(e["cpu_threads"] == max(1, cores // 2) for e in envs)


def test_imagenet_folder_pipeline_with_scale_augmentation_and_ten_crop(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("val", 2)):
        for cls in ("n01", "n02"):
            folder = tmp_path / "imagenet" / part / cls
            folder.mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(70, 120)), int(rng.integers(70, 120)))
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    result = resexp("train", "model=imagenet", "model.depth=18", "data=imagenet", f"data.root={tmp_path / 'imagenet'}",
                    "data.batch_size=4", "data.eval_batch_size=2", "data.workers=0", "data.scale_min=64",
                    "data.scale_max=96", "data.crop_size=56", "data.ten_crop=true", "schedule=plateau",
                    "schedule.iterations=4", "eval_every=2", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = rows(tmp_path / "runs/default/imagenet/residual-18A_s0")
    assert [r["step"] for r in metrics] == [2, 4] and metrics[0]["epoch"] == pytest.approx(2 / 3)
    assert all(r["test/error"] in (0.0, 25.0, 50.0, 75.0, 100.0) for r in metrics)  # 4 val images


def test_missing_imagenet_says_it_cannot_be_downloaded(tmp_path):
    result = resexp("train", "model=imagenet", "data=imagenet", f"data.root={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1 and "ImageFolder layout" in result.stderr and "cannot be downloaded" in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = resexp("train", "--debug", *TINY, "model.depth=21", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConfigError" in result.stderr
