"""The CUDA paths: bf16 + channels_last + compile + fused SGD against fp32 eager, the device
data path against the CPU one, `resexp train` and `resexp bench` on a GPU. Deselected by default;
`pytest -m gpu` runs them where a GPU is (they skip elsewhere)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY, resexp, torchrun
from resexp.data.cifar import Normalizer, TensorTrainStream
from resexp.nets.build import build_net
from resexp.run.setup import make_optimizer
from resexp.run.speed import EAGER, Speed
from resexp.run.step import GraphedStep, Running, make_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def batches(n: int = 512, batch_size: int = 64):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)
    return TensorTrainStream(x, y, batch_size, Normalizer(x, "pixel_mean", CUDA), True, 0, CUDA)


def train_eight_steps(speed: Speed, lrs: list[float]) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    model = speed.place(build_net("cifar", 20, "residual", "A", 10).to(CUDA))
    optimizer = make_optimizer(model, 0.02, 0.9, 1e-4, speed)
    running = Running(CUDA)
    step = make_step(model, optimizer, running, speed)
    for (x, y), lr in zip(batches().batches(0), lrs, strict=True):
        step(x, y, lr)
    torch.cuda.synchronize()
    params = torch.cat(
        [p.detach().float().flatten() for p in model.parameters()] + [b.float().flatten() for b in model.buffers()]
    )
    return params, {"count": running.count, **running.summary("train"), "graphed": isinstance(step, GraphedStep)}


LRS = [0.02] * 5 + [0.002] * 3  # a milestone inside the graphed iterations: the graph is recorded again


@pytest.mark.parametrize(
    "speed",
    [
        Speed("fp32", False, "off", False, True, False, "cuda"),  # the graph alone: same numbers up to TF32/ordering
        Speed("bf16", True, "off", True, True, True, "cuda"),
        Speed("bf16", True, "default", True, True, True, "cuda"),
        Speed("bf16", True, "reduce_overhead", True, False, True, "cuda"),
    ],
    ids=["graph-fp32", "graph-bf16", "compile-graph-bf16", "reduce-overhead-bf16"],
)
def test_fast_settings_train_like_fp32_eager(speed):
    reference, ref_stats = train_eight_steps(EAGER, LRS)
    fast, stats = train_eight_steps(speed, LRS)
    assert stats["graphed"] == speed.cuda_graph
    assert stats["count"] == ref_stats["count"] == 8 * 64  # graph replays are counted too
    assert stats["train/loss"] == pytest.approx(ref_stats["train/loss"], rel=2e-2)
    moved = (fast - reference).norm() / reference.norm()
    assert moved < (1e-3 if speed.precision == "fp32" else 2e-2)  # apart only by rounding
    if speed.precision == "fp32":  # the lr change reached the graph: keeping 0.02 ends far from here
        kept, _ = train_eight_steps(speed, [0.02] * 8)
        assert (kept - fast).norm() > 5 * (fast - reference).norm()


def test_device_data_path_matches_the_cpu_one():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 300)
    cpu = TensorTrainStream(x, y, 100, Normalizer(x, "pixel_mean", torch.device("cpu")), True, 3, torch.device("cpu"))
    gpu = TensorTrainStream(x, y, 100, Normalizer(x, "pixel_mean", CUDA), True, 3, CUDA)
    for (xc, yc), (xg, yg) in zip(cpu.batches(2), gpu.batches(2), strict=True):
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-5)
        assert torch.equal(yg.cpu(), yc)


def test_train_on_cuda_uses_the_fast_defaults(tmp_path):
    args = [a for a in TINY if a != "device=cpu"] + ["device=cuda"]
    out = resexp("train", *args, "schedule.iterations=8", "schedule.milestones=[4]", "eval_every=4", cwd=tmp_path)
    assert out.code == 0, out.stderr
    run_dir = next(tmp_path.glob("runs/*/*/*/"))
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["speed"]["precision"] == "bf16" and env["speed"]["channels_last"] and env["speed"]["fused_optimizer"]
    assert env["speed"]["cuda_graph"] and env["speed"]["cudnn_benchmark"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8] and all(np.isfinite(r["test/error"]) for r in rows)


def test_bench_on_cuda_reports_peak_memory(tmp_path):
    out = resexp(
        "bench",
        "--depths",
        "8",
        "--modes",
        "residual",
        "--iterations",
        "5",
        "--warmup",
        "3",
        "--images",
        "1024",
        "--workers",
        "2",
        "--json",
        cwd=tmp_path,
    )
    assert out.code == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["device"] == torch.cuda.get_device_name(0)
    for t in result["timings"]:
        assert t["peak_memory_mb"] > 0 and t["images_per_s"] > 0


def test_graph_is_recorded_again_for_a_short_last_batch():
    speed = Speed("fp32", False, "off", False, True, False, "cuda")
    x, y = next(iter(batches().batches(0)))
    params = {}
    for s in (EAGER, speed):
        torch.manual_seed(0)
        model = s.place(build_net("cifar", 8, "residual", "A", 10).to(CUDA))
        running = Running(CUDA)
        step = make_step(model, make_optimizer(model, 0.02, 0.9, 1e-4, s), running, s)
        for n in (64, 64, 64, 64, 64, 40, 64):  # graphed from the 4th; 40 = a short batch
            step(x[:n], y[:n], 0.02)
        params[s] = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert running.count == 6 * 64 + 40
    assert (params[speed] - params[EAGER]).norm() / params[EAGER].norm() < 1e-3


def test_torchrun_with_one_process_is_the_one_process_run(tmp_path):
    """`torchrun --nproc_per_node=1` on CUDA: a world of one needs no process group and no DDP, so
    the run is the plain one with its CUDA graph; with 2+ GPUs the notice says eager DDP runs."""
    cuda = [*[o for o in TINY if o != "device=cpu"], "device=cuda"]
    first = torchrun(*cuda, "schedule.iterations=8", cwd=tmp_path, nproc=1)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert "not used under torchrun" not in first_err
    run_dir = next(tmp_path.glob("runs/*/*/*"))
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["world_size"] == 1 and env["speed"]["cuda_graph"] is True and env["device"] == "cuda:0"
    if torch.cuda.device_count() >= 2:  # NCCL and eager DDP for real
        two = torchrun(*cuda, "schedule.iterations=16", "data.batch_size=32", "name=two", cwd=tmp_path)
        _, two_err = two.communicate(timeout=600)
        assert two.returncode == 0, two_err
        assert "not used under torchrun" in two_err and "eager DDP" in two_err


def test_fp16_trains_with_its_scaler_on_cuda_and_resumes_exactly(tmp_path, monkeypatch):
    """fp16 autocast + GradScaler (the default on compute capability 7.x; selectable on any GPU):
    eager steps (no CUDA graph), skipped steps counted, the scaler's state in the checkpoint."""
    import signal

    from conftest import folder, rows, signal_at

    args = [*TINY[:-1], "device=cuda", "speed.precision=fp16"]
    assert resexp("train", *args, "name=straight", cwd=tmp_path).code == 0
    signal_at(monkeypatch, 10, signal.SIGINT)
    assert resexp("train", *args, "name=stopped", cwd=tmp_path).code == 130
    monkeypatch.undo()
    assert resexp("train", *args, "name=stopped", cwd=tmp_path).code == 0
    a, b = (rows(tmp_path / folder(*args, f"name={n}")) for n in ("straight", "stopped"))
    assert [r["train/loss"] for r in a] == pytest.approx([r["train/loss"] for r in b], rel=1e-5)
    assert all("train/skipped_steps" in r for r in a)
    env = json.loads((tmp_path / folder(*args, "name=straight") / "environment.json").read_text())
    assert env["speed"]["precision"] == "fp16" and not env["speed"]["cuda_graph"]
