"""Speed switches, the reference loop and `resexp bench`, on the CPU (GPU paths: test_gpu.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY, resexp
from resexp.commands import reference
from resexp.commands.bench import Timing, fig6_projection
from resexp.config import CompileMode, SpeedConfig
from resexp.data.cifar import EvalSet, Normalizer
from resexp.errors import ConfigError
from resexp.launch.jobs import compose
from resexp.nets.build import build_net
from resexp.run import speed
from resexp.run.evaluate import evaluate
from resexp.run.speed import EAGER, Speed, resolve
from resexp.run.step import Running

CUDA = torch.device("cuda")  # resolving settings for a device needs no such device


def test_auto_picks_bf16_and_channels_last_on_a_cpu_with_bf16_units(monkeypatch):
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    cpu = torch.device("cpu")
    fast = resolve(compose(["device=cpu"]).speed, cpu)
    assert (fast.precision, fast.channels_last, fast.compile, fast.fused_optimizer, fast.cuda_graph) == (
        "bf16",
        True,
        "off",
        False,
        False,
    )
    pinned = resolve(compose(["device=cpu", "speed.precision=fp32"]).speed, cpu)
    assert pinned == EAGER  # fp32 asked for: channels_last follows it, as measured (no gain in fp32)
    assert resolve(compose(["device=cpu", "speed.channels_last=false"]).speed, cpu).channels_last is False


@pytest.mark.parametrize(
    ("flags", "has"),
    [
        ("fpu sse2 avx2 avx512f avx512bw", False),
        ("fpu avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
        ("fpu avx512f amx_tile amx_bf16 amx_int8", True),  # Intel Sapphire Rapids
    ],
)
def test_bf16_units_are_read_from_the_cpus_flags(flags, has):
    cpuinfo = f"processor\t: 0\nvendor_id\t: X\nflags\t\t: {flags}\nbugs\t\t: none\n"
    assert bool(speed.cpu_flags(cpuinfo) & set(speed.BF16_CPU_FLAGS)) is has
    assert speed.cpu_flags("no flags line") == set()


def test_auto_means_everything_off_on_cpu_and_on_for_cuda(monkeypatch):
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # an H100
    cfg = compose(["device=cpu"]).speed
    assert resolve(cfg, torch.device("cpu")) == EAGER
    cuda = resolve(cfg, CUDA)
    assert (cuda.precision, cuda.channels_last, cuda.fused_optimizer, cuda.cuda_graph, cuda.cudnn_benchmark) == (
        "bf16",
        True,
        True,
        True,
        True,
    )
    off = resolve(
        compose(["speed.precision=fp32", "speed.compile=off", "speed.channels_last=false", "device=cpu"]).speed, CUDA
    )
    assert (off.precision, off.compile, off.channels_last) == ("fp32", "off", False)
    # torch.compile's own CUDA graphs and resexp's whole-iteration graph exclude each other
    assert not resolve(SpeedConfig(compile=CompileMode.reduce_overhead), CUDA).cuda_graph
    with pytest.raises(ConfigError, match="cannot be combined"):
        resolve(SpeedConfig(compile=CompileMode.max_autotune, cuda_graph=True), CUDA)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve(SpeedConfig(cuda_graph=True), torch.device("cpu"))


def test_compile_modes_reach_torch_compile_in_torchs_spelling(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: calls.append(mode) or (lambda x: model(x)))
    net = build_net("cifar", 8, "residual", "A", 10)
    assert EAGER.for_training(net) is net  # off: the module itself, no wrapper
    for mode in ("default", "reduce_overhead", "max_autotune_no_cudagraphs"):
        Speed(compile=mode).for_training(net)
    assert calls == [None, "reduce-overhead", "max-autotune-no-cudagraphs"]


def test_the_speed_settings_reach_the_net_autocast_and_channels_last():
    """resexp's Speed applies what it says (what autocast and channels_last compute is torch's business)."""
    torch.manual_seed(0)
    net = build_net("cifar", 8, "residual", "A", 10).eval()
    x = torch.randn(16, 3, 32, 32)
    fp32, bf16 = EAGER.forward(net, x), Speed(precision="bf16").forward(net, x)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # autocast ran; the logits come back fp32
    Speed(channels_last=True).place(net)
    assert net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_run_may_resume_under_other_speed_settings(tmp_path):
    first = resexp("train", *TINY, "speed.precision=fp32", "speed.channels_last=true", cwd=tmp_path)
    assert first.code == 0, first.stderr
    env = json.loads(next(tmp_path.glob("runs/*/*/*/environment.json")).read_text())
    assert env["speed"] == {
        "precision": "fp32",
        "channels_last": True,
        "compile": "off",
        "fused_optimizer": False,
        "cuda_graph": False,
        "cudnn_benchmark": False,
    }
    again = resexp("train", *TINY, "speed.channels_last=false", "speed.precision=bf16", cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert "complete already" in again.stderr


def arrays(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_reference_loop_sees_the_same_images_as_resexp():
    x, y = arrays()
    train, test = reference.loaders(x, y, x, y, batch_size=16, workers=0, seed=0, pin_memory=False)
    ours = torch.cat([b for b, _ in EvalSet(x, y, 64, Normalizer(x, "pixel_mean", torch.device("cpu")), "cpu")])
    theirs = torch.cat([b for b, _ in test])
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)  # same per-pixel mean subtraction
    # Every augmented training image is one of the 81 crops x 2 flips of its padded original.
    mean = x.astype(np.float64).mean(0) / 255
    batch, labels = next(iter(train))
    assert batch.shape == (16, 3, 32, 32) and len(train) == 4  # drop_last, like resexp
    for image, label in zip(batch, labels, strict=True):
        raw = (image.permute(1, 2, 0).numpy() + mean) * 255
        candidates = [i for i in range(len(x)) if y[i] == label]
        assert any(is_crop_of(raw, x[i]) for i in candidates)


def is_crop_of(image: np.ndarray, original: np.ndarray) -> bool:
    padded = np.pad(original.astype(np.float64), ((4, 4), (4, 4), (0, 0)))
    for flip in (False, True):
        source = padded[:, ::-1] if flip else padded
        for dy in range(9):
            for dx in range(9):
                crop = source[dy : dy + 32, dx : dx + 32]
                if np.abs(crop - image).max() < 0.01:
                    return True
    return False


def test_reference_test_error_agrees_with_resexp_evaluate():
    x, y = arrays(200, seed=1)
    torch.manual_seed(0)
    net = build_net("cifar", 8, "plain", "A", 10)
    _, test = reference.loaders(x, y, x, y, batch_size=16, workers=0, seed=0, pin_memory=False)
    theirs = reference.test_error(net, test, torch.device("cpu"))
    ours = evaluate(net, EvalSet(x, y, 64, Normalizer(x, "pixel_mean", torch.device("cpu")), "cpu"), "test")
    assert theirs == pytest.approx(ours["test/error"])


def test_fig6_projection_interpolates_32_and_44_and_sums_eight_runs():
    def t(net: str, s: float) -> Timing:
        return Timing(net, "fast", 1.0, 1.0, 0.0, None, s)

    timings = [t("plain-20", 100), t("plain-56", 280), t("residual-20", 110), t("residual-56", 290)]
    # plain: 100 + 160 + 220 + 280 (32 and 44 lie 1/3 and 2/3 of the way from 20 to 56); residual: each +10
    assert fig6_projection(timings, "fast") == pytest.approx(760 + 800)
    assert fig6_projection(timings[:2], "fast") is None


def test_bench_on_cpu_reports_both_paths(tmp_path):
    small = ["--depths", "8", "--images", "512", "device=cpu", "data.batch_size=64"]
    out = resexp(
        "bench",
        *small,
        "--modes",
        "residual",
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--workers",
        "1",
        "--json",
        "speed.channels_last=true",
        cwd=tmp_path,
    )
    assert out.code == 0, out.stderr
    result = json.loads(out.stdout)
    paths = {t["path"]: t for t in result["timings"]}
    assert set(paths) == {"fast", "reference"}
    for t in paths.values():
        assert t["net"] == "residual-8" and t["images_per_s"] > 0 and t["projected_run_s"] > 64000 * 0.001
        assert t["peak_memory_mb"] is None  # CUDA only
    assert result["speedup"]["residual-8"] == pytest.approx(
        paths["fast"]["images_per_s"] / paths["reference"]["images_per_s"]
    )
    assert result["speed"]["channels_last"] is True and result["speed"]["compile"] == "off"  # the overrides
    assert result["batch_size"] == 64 and result["reference_workers"] == 1
    table = resexp(
        "bench", *small, "--modes", "plain", "--iterations", "1", "--warmup", "0", "--workers", "0", cwd=tmp_path
    )
    assert table.code == 0, table.stderr
    assert "plain-8: fast path" in table.stdout and "the reference loop" in table.stdout
    assert "reference: fp32 eager, 0 DataLoader workers" in table.stdout
    alone = resexp(
        "bench", *small, "--modes", "plain", "--iterations", "1", "--warmup", "0", "--no-reference", cwd=tmp_path
    )
    assert alone.code == 0 and "reference" not in alone.stdout.split("┏")[0], alone.stdout  # no reference was run


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depths", "21"], "6n+2"),
        (["--modes", "highway"], "--modes highway must be a comma list of plain, residual"),
        (["--depths", "abc"], "--depths abc must be a comma list of CIFAR depths: 6n+2 for n >= 1"),
        (["--depths", "1000000004", "device=cpu"], "--depths 1000000004 at a batch of 128 needs about"),
        (["--images", "100000000", "device=cpu"], "--images 100000000 needs about"),
        (["--workers", "999", "device=cpu"], "--workers 999 must be at most"),
        (["speed.compile=fastest"], "expected one of auto, off, default, reduce_overhead"),
        (["device=mps"], "device=mps asked for, but this machine has no Apple GPU"),
        (["--images", "10", "device=cpu"], "--images 10 must be at least data.batch_size=128"),
        (["--iterations", "0", "device=cpu"], "--iterations 0 must be at least 1"),
    ],
)
def test_bench_rejects_bad_options_in_one_line(tmp_path, args, message):
    out = resexp("bench", *args, cwd=tmp_path)
    assert out.code == 1 and len(out.lines) == 1 and message in out.stderr, out.stderr


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_one_on_cpu(tmp_path):
    """torch.compile on the CPU (needs a C++ compiler): same losses as eager within rounding."""
    fp32 = "speed.precision=fp32"  # on a CPU with bf16 units auto is bf16, whose rounding compile reorders
    a = resexp("train", *TINY, fp32, "speed.compile=off", "name=a", cwd=tmp_path)
    b = resexp("train", *TINY, fp32, "speed.compile=default", "name=b", cwd=tmp_path)
    assert a.code == 0 and b.code == 0, b.stderr
    rows = [
        [json.loads(line) for line in next(tmp_path.glob(f"runs/{n}/*/*/metrics.jsonl")).read_text().splitlines()]
        for n in ("a", "b")
    ]
    for ra, rb in zip(*rows, strict=True):
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], rel=1e-3)


def test_running_sums_stay_in_the_same_tensors():
    """A CUDA graph records the addresses of the running sums: reset and load must work in place."""
    running = Running(torch.device("cpu"))
    loss, errors = running.loss, running.errors
    running.add(torch.tensor(2.0), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0]))
    assert running.summary("train") == {"train/loss": 2.0, "train/error": 50.0}
    running.reset()
    running.load_state_dict({"loss": 3.0, "errors": 1, "count": 4})
    assert running.loss is loss and running.errors is errors
    assert running.summary("train") == {"train/loss": 0.75, "train/error": 25.0}


# --------------------------------------------------------------------------- precision by what the device has


@pytest.mark.parametrize(
    ("capability", "precision"),
    [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 0), "fp32")],
    ids=["H100", "A100", "RTX 3090", "T4", "V100", "P100"],
)
def test_auto_precision_is_what_the_gpu_computes_natively(monkeypatch, capability, precision):
    """Before: bf16 on every GPU, which a T4 or V100 only emulates (torch.cuda.is_bf16_supported()
    answers True there all the same)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    chosen = resolve(SpeedConfig(), CUDA)
    assert chosen.precision == precision
    assert chosen.cuda_graph == (precision != "fp16")  # fp16's scaler reads an overflow flag on the CPU each step


def test_fp16_and_the_cuda_graph_are_refused_together_and_the_graph_off_is_said(monkeypatch):
    from resexp.config import Precision
    from resexp.distributed import World
    from resexp.run.lifecycle import speed_notices

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ConfigError, match="cannot be combined with speed.precision=fp16"):
        resolve(SpeedConfig(precision=Precision.fp16, cuda_graph=True), CUDA)
    cfg = compose(["device=cpu"])
    lines = speed_notices(cfg, resolve(cfg.speed, CUDA), World())
    assert lines == [
        "note: the CUDA-graph step is not used with fp16 (its gradient scaler checks every step's gradients for "
        "overflow on the CPU): training with eager steps"
    ]
    assert resolve(SpeedConfig(precision=Precision.fp16), torch.device("cpu")).precision == "fp16"  # anywhere


def test_a_step_whose_gradients_overflow_is_skipped_counted_and_leaves_the_weights():
    """fp16's scaler on the CPU, with a gradient made infinite on purpose."""
    from resexp.run.step import EagerStep

    torch.manual_seed(0)
    net = build_net("cifar", 8, "residual", "A", 10)
    fast = Speed(precision="fp16")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    running, scaler = Running(torch.device("cpu"), scaled=True), fast.scaler()
    step = EagerStep(net, optimizer, running, fast, scaler)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    poison = net.head[-1].weight.register_hook(lambda g: g * float("inf"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scale = scaler.get_scale()
    step(x, y, 0.1)
    assert running.skipped == 1 and scaler.get_scale() == scale / 2
    assert all(
        torch.equal(before[k], v) for k, v in net.state_dict().items() if "running" not in k and "batches" not in k
    )
    poison.remove()
    step(x, y, 0.1)
    assert running.skipped == 1 and not torch.equal(before["head.2.weight"], net.head[-1].weight)
    summary = running.summary("train")
    assert summary["train/skipped_steps"] == 1 and np.isfinite(summary["train/loss"])  # not a divergence


def test_an_fp16_run_resumes_exactly_with_its_scalers_state(tmp_path, monkeypatch):
    import signal

    from conftest import folder, rows, signal_at

    args = [*TINY, "data.image_size=8", "data.train_size=64", "data.batch_size=16", "speed.precision=fp16"]
    straight = resexp("train", *args, "name=straight", cwd=tmp_path)
    assert straight.code == 0, straight.stderr
    signal_at(monkeypatch, 10, signal.SIGINT)
    assert resexp("train", *args, "name=stopped", cwd=tmp_path).code == 130
    monkeypatch.undo()
    assert resexp("train", *args, "name=stopped", cwd=tmp_path).code == 0
    a, b = (rows(tmp_path / folder(*args, f"name={n}")) for n in ("straight", "stopped"))
    assert [{k: v for k, v in r.items() if k != "time"} for r in a] == [
        {k: v for k, v in r.items() if k != "time"} for r in b
    ]
    assert all("train/skipped_steps" in r for r in a)
    saved = torch.load(tmp_path / folder(*args, "name=stopped") / "last.pt", weights_only=True)
    assert saved["scaler"]["scale"] > 0 and saved["scaler"]["_growth_tracker"] == 16


# --------------------------------------------------------------------------- a Mac's GPU (MPS)

MPS = torch.device("mps")


def test_auto_picks_a_macs_gpu_when_there_is_no_cuda_and_mps_is_refused_where_there_is_none(monkeypatch):
    from resexp import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: True)
    assert device.pick_device("auto") == MPS and device.pick_device("mps") == MPS
    monkeypatch.setattr(device, "mps_available", lambda: False)
    assert device.pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device=mps asked for, but this machine has no Apple GPU"):
        device.pick_device("mps")
    with pytest.raises(ConfigError, match="device=tpu is not a device: use auto, cpu, cuda, cuda:N or mps"):
        device.pick_device("tpu")


def test_on_mps_everything_is_off_and_what_it_lacks_is_said_or_refused(monkeypatch):
    from resexp.config import Precision
    from resexp.distributed import World
    from resexp.run.lifecycle import speed_notices

    chosen = resolve(SpeedConfig(), MPS)
    assert (chosen.precision, chosen.channels_last, chosen.fused_optimizer, chosen.cuda_graph) == (
        "fp32",
        False,
        False,
        False,
    )
    asked = compose(["device=cpu", "speed.fused_optimizer=true"])
    assert not resolve(asked.speed, MPS).fused_optimizer
    assert speed_notices(asked, resolve(asked.speed, MPS), World()) == [
        "note: speed.fused_optimizer=true is off on a Mac's GPU (not measured there): unfused SGD"
    ]
    with pytest.raises(ConfigError, match="speed.cuda_graph=true needs a CUDA device, not mps"):
        resolve(SpeedConfig(cuda_graph=True), MPS)
    assert resolve(SpeedConfig(precision=Precision.bf16), MPS).precision == "bf16"  # asked for: the user's choice


def test_mps_under_torchrun_is_one_line(monkeypatch):
    from resexp import distributed
    from resexp.distributed import World

    monkeypatch.setattr(distributed, "current", lambda: World(0, 2, 0))
    with pytest.raises(ConfigError, match="device=mps under torchrun: a Mac has one GPU"):
        distributed.device_for("mps")


def test_checkpoints_and_weights_load_onto_the_cpu_whatever_device_saved_them(tmp_path, monkeypatch):
    """A checkpoint written on a Mac's GPU (or a GPU) holds tensors of that device: every reader
    maps them to the CPU first (a run then moves them where it trains), so runs and weights move
    between a Mac, a GPU machine and a CPU. (The MPS tensors themselves cannot be made here.)"""
    from resexp.rundir import checkpoints as checkpoint
    from resexp.rundir import read as rundir
    from resexp.rundir import weights

    assert resexp("train", *TINY, cwd=tmp_path).code == 0
    last = next(tmp_path.glob("runs/*/*/*/last.pt"))
    seen = []
    real = torch.load

    def load(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    checkpoint.read(last)
    weights.load(last)
    rundir.checkpoint_says(last)
    assert seen == ["cpu", "cpu", "cpu"]
