"""One run on several processes: the data split (in-process), and torchrun itself (2 CPU processes
over gloo, real subprocesses: the process boundary is what these tests are about)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import folder, leftovers, resexp, rows, signal_at, torchrun
from resexp.data import build_data
from resexp.data.cifar import EvalSet, Normalizer, TensorTrainStream
from resexp.data.common import shard
from resexp.data.imagenet import FolderEvalSet, FolderTrainStream
from resexp.distributed import World
from resexp.errors import ConfigError
from resexp.launch.jobs import compose
from resexp.nets.build import build_model
from resexp.run import lifecycle
from resexp.run.evaluate import evaluate

# 8 iterations of a small lr: two processes with SyncBatchNorm follow one process within float noise.
RUN = [
    "data=synthetic",
    "data.train_size=256",
    "data.test_size=65",  # odd: the two processes evaluate 32 and 33 images
    "model.depth=8",
    "optim.lr=0.01",
    "speed.precision=fp32",  # equality within float32 rounding; bf16 rounds coarser
    "device=cpu",
]


# --------------------------------------------------------------------------- the split, in-process


def test_a_global_batch_must_divide_among_the_processes():
    assert World(1, 4, 1).share(256) == 64
    with pytest.raises(ConfigError, match="data.batch_size=30 is the global batch and does not divide among 4"):
        World(0, 4, 0).share(30)


@pytest.mark.parametrize("n", [1, 7, 64, 65, 1000])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_evaluation_slices_cover_every_image_exactly_once(n, size):
    covered = [i for rank in range(size) for i in range(n)[shard(n, World(rank, size, rank))]]
    assert covered == list(range(n))


def tensor_stream(world: World) -> TensorTrainStream:
    x = np.arange(40 * 4 * 4 * 3, dtype=np.int64).reshape(40, 4, 4, 3) % 251
    x = x.astype(np.uint8)
    y = np.arange(40)  # the label is the image's index: batches say which images they hold
    normalize = Normalizer(x, "channel", torch.device("cpu"))
    return TensorTrainStream(x, y, 8, normalize, True, 3, torch.device("cpu"), pad=1, world=world)


@pytest.mark.parametrize("size", [2, 4])
def test_each_process_takes_its_share_of_the_same_global_batches(size):
    """The epoch's order and augmentation do not depend on the number of processes: rank r's
    batch i is the r-th part of one process's batch i, crops and flips included, from any position."""
    whole = list(tensor_stream(World()).batches(epoch=2, start=1))
    parts = [list(tensor_stream(World(r, size, r)).batches(epoch=2, start=1)) for r in range(size)]
    assert len(whole) == 4 and all(len(p) == 4 for p in parts)
    for i, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([p[i][1] for p in parts]), y)
        assert torch.equal(torch.cat([p[i][0] for p in parts]), x)


class Indexed(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(1), i


def test_folder_streams_split_the_same_way():
    cfg = compose(["data=synthetic", "data.batch_size=6", "data.workers=0", "device=cpu"]).data
    cpu = torch.device("cpu")
    whole = [y for _, y in FolderTrainStream(Indexed(), cfg, 0, cpu).batches(1, start=2)]
    parts = [
        [y for _, y in FolderTrainStream(Indexed(), cfg, 0, cpu, World(r, 3, r)).batches(1, start=2)] for r in (0, 1, 2)
    ]
    assert len(whole) == 3
    for i, y in enumerate(whole):
        assert torch.equal(torch.cat([p[i] for p in parts]), y)
    seen = [int(i) for r in range(3) for _, y in FolderEvalSet(Indexed(), cfg, cpu, World(r, 3, r)) for i in y]
    assert seen == list(range(30))


def test_evaluation_sets_split_by_process():
    x = np.zeros((65, 2, 2, 3), np.uint8)
    y = np.arange(65)
    normalize = Normalizer(x, "channel", torch.device("cpu"))
    seen = [
        int(i)
        for r in range(2)
        for _, b in EvalSet(x, y, 10, normalize, torch.device("cpu"), World(r, 2, r))
        for i in b
    ]
    assert seen == list(range(65))


# --------------------------------------------------------------------------- torchrun, 2 processes over gloo


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the worker torchrun started as `rank` (read from /proc)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{launcher.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                try:
                    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"RANK={rank}".encode() in environ:
                    return int(child)
        time.sleep(0.05)
    raise AssertionError("torchrun started no worker")


def wait_for(path: Path, launcher: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert launcher.poll() is None, launcher.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def assert_close_runs(a: list[dict], b: list[dict], rel: float = 1e-4, images: int = 0) -> None:
    """The same evaluations, equal up to float noise: losses within `rel`, and errors within
    `images` borderline images whose argmax the noise flipped. Noise grows along a run: one
    process run with 1 thread and with 2 differs by 1.2e-3 in loss and 3 training images at
    iteration 80 of a 200-iteration run like the one below."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-9)
        for key in ("train/loss", "test/loss"):
            assert ra[key] == pytest.approx(rb[key], rel=rel), (ra["step"], key)
        assert abs(ra["test/error"] - rb["test/error"]) <= 100 * images / 65 + 1e-9, ra["step"]
        assert abs(ra["train/error"] - rb["train/error"]) <= 100 * images / 640 + 1e-9, ra["step"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: the same runs in one process (100 iterations, evaluations every 20)."""
    cwd = tmp_path_factory.mktemp("one")
    for iterations in (8, 100):
        out = resexp(
            "train",
            *RUN,
            f"schedule.iterations={iterations}",
            "eval_every=4" if iterations == 8 else "eval_every=20",
            f"name=i{iterations}",
            cwd=cwd,
        )
        assert out.code == 0, out.stderr
    return cwd


def test_one_process_resumed_on_two_with_sync_bn_trains_as_one(tmp_path, one_process, monkeypatch):
    """A run stopped after 4 iterations in one process goes on under torchrun with 2: every
    evaluation once in one metrics.jsonl (rank 0's), the world size recorded, and with
    SyncBatchNorm the same weights and metrics as one process with the same global batch."""
    signal_at(monkeypatch, 4, signal.SIGTERM)
    first = resexp("train", *RUN, "schedule.iterations=8", "eval_every=4", "model.sync_bn=true", cwd=tmp_path)
    assert first.code == 128 + signal.SIGTERM and "model.sync_bn=true has no effect in one process" in first.stderr
    monkeypatch.undo()
    launcher = torchrun(*RUN, "schedule.iterations=8", "eval_every=4", "model.sync_bn=true", cwd=tmp_path)
    out, err = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, err
    run_dir = folder(*RUN, "schedule.iterations=8", "eval_every=4", "model.sync_bn=true")
    assert f"resuming {run_dir} from iteration 4" in err
    run_dir = tmp_path / run_dir
    reference = one_process / folder(*RUN, "schedule.iterations=8", "eval_every=4", "name=i8")
    assert [r["step"] for r in rows(run_dir)] == [4, 8]
    assert_close_runs(rows(run_dir), rows(reference))
    ours, theirs = weights(run_dir), weights(reference)
    assert ours.keys() == theirs.keys()  # no DDP "module." prefix: the checkpoint is the plain net's
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5)
    env = (run_dir / "environment.json").read_text()
    assert '"world_size": 2' in env and '"batch_per_process": 16' in env
    assert (
        len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    )  # one per process that wrote: the first run's, rank 0's
    assert sum("[8/8]" in line for line in err.splitlines()) == 1  # rank 0 alone prints


@pytest.mark.slow  # 13 s of torchrun; default suite: agreed stops in-process (one_of_two), torchrun resume
def test_sigterm_to_one_rank_stops_both_and_the_run_resumes_in_one_process(tmp_path, one_process):
    launcher = torchrun(*RUN, "schedule.iterations=100", "eval_every=20", "model.sync_bn=true", cwd=tmp_path)
    name = folder(*RUN, "schedule.iterations=100", "eval_every=20", "model.sync_bn=true")
    run_dir = tmp_path / name
    wait_for(run_dir / "last.pt", launcher)
    subprocess.run(["kill", "-TERM", str(rank_pid(launcher, 1))], check=True)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0  # torchrun reports its workers' exit status 143
    status = (run_dir / "status.json").read_text()
    assert '"interrupted"' in status and "SIGTERM" in status
    assert "checkpoint saved in" in err and "run the same command again to resume" in err
    saved = torch.load(run_dir / "last.pt", weights_only=True)
    stopped = saved["step"]
    assert 20 <= stopped < 100 and stopped % 10 == 0  # both ranks stopped after the same iteration
    assert (
        saved["running"]["count"] == stopped % 20 * 32
    )  # the training sums of both processes since the last evaluation
    resumed = resexp("train", *RUN, "schedule.iterations=100", "eval_every=20", "model.sync_bn=true", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    assert f"resuming {name} from iteration {stopped}" in resumed.stderr
    # the metrics go on as one process's would have: 2 processes up to the stop, 1 after it
    reference = one_process / folder(*RUN, "schedule.iterations=100", "eval_every=20", "name=i100")
    assert_close_runs(rows(run_dir), rows(reference), rel=1e-2, images=8)


@pytest.mark.slow  # 9 s of torchrun; in the default suite: a file missing on one node ends every rank
def test_a_torchrun_sweep_goes_past_a_diverged_run_and_a_locked_one_and_a_rank_that_dies_ends_the_other(tmp_path):
    """One torchrun command, three jobs (one launch: each costs seconds of process start-up):
    a divergence stops every rank with one line and the sweep goes on; rank 0 refused the next
    run's lock (another command holds it) ends that run on every rank at once, with one line,
    instead of the others waiting for rank 0's decision for ever (as before: rank 0 at its closing
    barrier, the others in a broadcast); then a rank killed mid-run ends the other with one line."""
    from resexp.rundir.folder import RunLock

    args = [*RUN, "schedule.iterations=100000", "eval_every=20"]
    diverging, locked, killed = (tmp_path / folder(*args, f"optim.lr={lr}") for lr in ("1e6", "0.01", "0.02"))
    with RunLock(locked):
        launcher = torchrun("-m", *args, "optim.lr=1e6,0.01,0.02", cwd=tmp_path)
        wait_for(killed / "last.pt", launcher)
        subprocess.run(["kill", "-KILL", str(rank_pid(launcher, 1))], check=True)
        out, err = launcher.communicate(timeout=60)  # no hang
    assert launcher.returncode != 0
    assert '"diverged"' in (diverging / "status.json").read_text()
    assert sum(line.startswith("diverged:") for line in err.splitlines()) == 1
    ours = [line for line in err.splitlines() if line.startswith(("error:", "rank "))]
    assert len(ours) == 2 and "is being written by another resexp process" in ours[0], err
    assert not (locked / "status.json").exists()
    assert "lost contact with another process of this torchrun run" in ours[1]
    assert "run the same command again to resume" in ours[1] and "Traceback" not in err.split(ours[1])[0]
    assert '"failed"' in (killed / "status.json").read_text()
    # BatchNorm per process: both processes evaluated rank 0's net, the one its checkpoint holds
    saved = torch.load(killed / "last.pt", weights_only=True)
    [row] = [r for r in rows(killed) if r["step"] == saved["step"]]
    cfg = compose([*args, "optim.lr=0.02"])
    data = build_data(cfg.data, cfg.seed, torch.device("cpu"))
    net = build_model(cfg, data.num_classes)
    net.load_state_dict(saved["model"])
    again = evaluate(net, data.evals["test"], "test")
    assert again["test/error"] == row["test/error"]
    assert again["test/loss"] == pytest.approx(row["test/loss"], rel=1e-5)


def test_a_failed_collective_is_a_lost_peer_by_where_it_failed_not_by_its_text(monkeypatch):
    """gloo's transport errors are plain RuntimeErrors whose text varies by version: a collective's
    failure is known by where it happened (resexp's collectives, DDP's all-reduce hook)."""
    from resexp import distributed
    from resexp.errors import PeerLost

    monkeypatch.setattr(distributed.GroupState, "broken", False)
    monkeypatch.setattr(distributed, "current", lambda: World(rank=0, size=2))
    unrelated = RuntimeError("Connection closed by peer [127.0.0.1]:41234")
    assert not distributed.peer_lost(unrelated)  # an error outside any collective is this process's own
    with pytest.raises(PeerLost) as raised, distributed.collective():
        raise unrelated
    assert raised.value.__cause__ is unrelated and distributed.GroupState.broken
    assert distributed.peer_lost(RuntimeError("whatever backward raised after it"))
    # With the group broken, leaving it does not wait on a collective that would fail a second
    # time (and print a second line after the run's own).
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("closed")))
    distributed.close()
    monkeypatch.setattr(distributed, "current", lambda: World())
    assert not distributed.peer_lost(RuntimeError("x"))  # one process has no peers to lose


def test_a_failed_gradient_all_reduce_marks_the_group_broken(monkeypatch):
    """DDP's all-reduce fails inside backward, as whatever error the backend raises: the hook's
    future remembers it, so that the run reads it as a lost peer."""
    from resexp import distributed
    from resexp.run import ddp

    monkeypatch.setattr(distributed.GroupState, "broken", False)
    fine, failed = torch.futures.Future(), torch.futures.Future()
    ok, bad = ddp.remembered(fine), ddp.remembered(failed)
    fine.set_result([torch.ones(2)])
    assert torch.equal(ok.wait(), torch.ones(2)) and not distributed.GroupState.broken
    failed.set_exception(RuntimeError("Connection closed by peer"))
    with pytest.raises(RuntimeError):
        bad.wait()
    assert distributed.GroupState.broken


def test_under_torchrun_a_batch_that_does_not_divide_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    one_of_two(monkeypatch, rank=0)
    out = resexp("train", *RUN, "data.batch_size=33", cwd=tmp_path)
    assert out.code == 1
    assert out.lines == [
        "error: data.batch_size=33 is the global batch and does not divide among 2 processes: use a multiple of 2 "
        "(e.g. 32)"
    ]
    assert not (tmp_path / "runs").exists()


def test_under_torchrun_the_cuda_graph_gives_way_to_eager_ddp_with_a_notice(monkeypatch):
    from resexp import distributed
    from resexp.run import lifecycle
    from resexp.run.speed import resolve

    cfg = compose(RUN)
    cuda = resolve(cfg.speed, torch.device("cuda"))
    assert cuda.cuda_graph  # what one process on a GPU runs
    two = World(0, 2, 0)
    [line] = lifecycle.speed_notices(cfg, cuda, two)
    assert "CUDA-graph step is not used under torchrun" in line and "eager DDP" in line
    assert lifecycle.speed_notices(cfg, cuda, World()) == []
    monkeypatch.setattr(distributed, "current", lambda: two)
    monkeypatch.setattr(lifecycle, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(lifecycle, "check_memory", lambda *args: None)
    device, speed = lifecycle.check(compose([*RUN, "device=cuda"]))
    assert speed.cuda_graph is False and speed.channels_last and speed.fused_optimizer  # the rest stays


@pytest.mark.parametrize(
    "env", [{"WORLD_SIZE": "2"}, {"WORLD_SIZE": "x", "RANK": "0", "LOCAL_RANK": "0"}, {"WORLD_SIZE": "2", "RANK": "1"}]
)
def test_a_half_set_torchrun_environment_is_one_line(tmp_path, monkeypatch, env):
    from resexp import distributed

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    distributed.current.cache_clear()
    try:
        out = resexp("train", *RUN, cwd=tmp_path)
    finally:
        monkeypatch.undo()
        distributed.current.cache_clear()
    assert out.code == 1 and len(out.lines) == 1
    assert "WORLD_SIZE is set but this is not a torchrun process" in out.lines[0] and "unset WORLD_SIZE" in out.lines[0]
    assert distributed.current() == World()


def test_a_torchrun_environment_without_a_rendezvous_is_one_line(tmp_path, monkeypatch):
    """Before: torch's "Error initializing torch.distributed using env:// rendezvous" as an unexpected error."""
    from resexp import distributed

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    distributed.current.cache_clear()
    try:
        out = resexp("train", *RUN, cwd=tmp_path)
    finally:
        monkeypatch.undo()
        distributed.current.cache_clear()
    assert out.code == 1 and out.lines == [
        "error: WORLD_SIZE=2 is set but MASTER_ADDR and MASTER_PORT are not: start several processes with torchrun, "
        "which sets them, or unset WORLD_SIZE for one"
    ]
    assert leftovers(tmp_path) == []


def test_under_torchrun_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    from resexp import distributed

    monkeypatch.setattr(distributed, "current", lambda: World(3, 4, 1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.device_for("auto") == distributed.device_for("cuda") == "cuda:1"
    assert distributed.device_for("cpu") == "cpu"
    with pytest.raises(ConfigError, match="device=cuda:0 names one GPU, but under torchrun each of the 4 processes"):
        distributed.device_for("cuda:0")


def test_a_start_that_fails_in_one_process_fails_in_all(monkeypatch):
    """`distributed.all_or_none`: when the action fails in any process, every process fails; rank 0
    prints every failed process's line, each in its own words after its rank, and the others stay
    quiet (before: a non-zero rank's words never reached rank 0's terminal)."""
    from resexp import distributed
    from resexp.errors import DataError, OwnFailure, PeerFailed

    def broken():
        raise DataError("data file /node2/c.npz does not exist")

    said: list[str | None] = []

    def two(mine: str, other: str):  # rank 0 and rank 1's lines, as the exchange gives them to both
        return lambda line: said.append(line) or ([line or "", other] if mine == "0" else [other, line or ""])

    monkeypatch.setattr(distributed, "current", lambda: World(0, 2, 0))
    monkeypatch.setattr(distributed, "exchange", two("0", "data file /node2/c.npz does not exist"))
    with pytest.raises(PeerFailed) as peer:  # rank 0 built its share; rank 1 could not
        distributed.all_or_none(lambda: "built")
    assert str(peer.value) == "rank 1: data file /node2/c.npz does not exist" and said == [None]
    assert distributed.printed_line(peer.value, str(peer.value)) == str(peer.value)  # rank 0 says it
    with pytest.raises(OwnFailure, match="^data file /node2/c.npz does not exist$") as own:  # both: said once
        distributed.all_or_none(broken)
    assert isinstance(own.value.__cause__, DataError)
    monkeypatch.setattr(distributed, "current", lambda: World(1, 2, 1))
    monkeypatch.setattr(distributed, "exchange", two("1", ""))
    with pytest.raises(PeerFailed) as quiet:  # rank 1's own failure: its words go to rank 0
        distributed.all_or_none(broken)
    assert distributed.printed_line(quiet.value, "x") is None and said[-1] == "data file /node2/c.npz does not exist"
    monkeypatch.setattr(distributed, "exchange", lambda line: ["", ""])  # nobody failed
    assert distributed.all_or_none(lambda: "built") == "built"


def one_of_two(monkeypatch, rank: int, others_fail: bool = False) -> list[bool]:
    """This process as rank `rank` of a 2-process run whose collectives are this process's own
    values (the other rank agrees with everything it is told); the agreements it makes, recorded."""
    from resexp import distributed
    from resexp.run import ddp

    agreed: list[bool] = []

    def exchange(line: str | None) -> list[str]:
        agreed.append(bool(line))
        other = "could not write the checkpoint: no space left" if others_fail and len(agreed) > 3 else ""
        return [line or "", other] if rank == 0 else [other, line or ""]

    monkeypatch.setattr(distributed, "current", lambda: World(rank, 2, rank))
    for name, stand_in in (
        ("init", lambda device: None),
        ("join", lambda: None),
        ("exchange", exchange),
        ("reduce_values", lambda values, device, op: list(values)),
        ("broadcast", lambda obj: obj if obj is not None else lifecycle.Decision()),
        ("barrier", lambda device: None),
        ("close", lambda: None),
    ):
        monkeypatch.setattr(distributed, name, stand_in)
    monkeypatch.setattr(ddp, "rank0_buffers", lambda model: None)
    monkeypatch.setattr(ddp, "wrap", lambda model, device, sync_bn: model)
    return agreed


def test_a_write_that_fails_under_rank_0_is_agreed_by_every_rank(tmp_path, monkeypatch):
    """Every write rank 0 makes during training (a row, a checkpoint, a status) is agreed by all
    ranks: a full disk at a checkpoint ends the others at once instead of leaving them waiting in
    the next collective; they end with nothing to say (rank 0 says it)."""
    from resexp.errors import CheckpointError
    from resexp.run import checkpoint

    real = checkpoint.save

    def full_at_20(run, state):
        if state["step"] >= 20:
            raise CheckpointError(f"could not write the checkpoint {run.file('last.pt')}: no space left")
        real(run, state)

    monkeypatch.setattr(checkpoint, "save", full_at_20)
    agreed = one_of_two(monkeypatch, rank=0)
    out = resexp("train", *RUN, "schedule.iterations=40", "eval_every=10", cwd=tmp_path)
    assert out.code == 1 and [line[:7] for line in out.lines[:-1]] == ["[10/40]", "[20/40]"], out.stderr
    assert "no space left (at iteration 20;" in out.lines[-1] and "keeps its last checkpoint" in out.lines[-1]
    assert agreed[-1] is True  # the failure was told to the other rank
    run_dir = tmp_path / folder(*RUN, "schedule.iterations=40", "eval_every=10")
    assert '"failed"' in (run_dir / "status.json").read_text()
    one_of_two(monkeypatch, rank=1, others_fail=True)  # the other side: rank 0's write failed
    other = resexp("train", *RUN, "schedule.iterations=40", "eval_every=10", "name=other", cwd=tmp_path)
    assert other.code == 1 and other.lines == []  # rank 0 speaks for it
    assert not (tmp_path / "runs/other").exists()  # rank 1 writes nothing


# A file that rank 1's node lacks: every worker imports this (PYTHONPATH) and rank 1 sees no such file.
NODE_LACKS = """
import os, pathlib
if os.environ.get("RANK") == "1":
    real = pathlib.Path.is_file
    pathlib.Path.is_file = lambda self: False if self.name == "node-local.npz" else real(self)
"""


def test_a_file_missing_on_one_node_ends_every_rank_at_once_in_that_ranks_words_on_rank_0(tmp_path):
    """Before: both ranks waited silently in collectives (rank 1's data check failed where rank 0's
    did not) and the folder kept its lock; a non-zero rank's message never reached rank 0."""
    from conftest import write_npz

    write_npz(tmp_path / "node-local.npz", n_train=64, n_test=32)
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(NODE_LACKS)
    args = ["data.root=node-local.npz", "model.depth=8", "schedule.iterations=4", "data.batch_size=16", "device=cpu"]
    started = time.monotonic()
    launcher = torchrun(*args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "inject")})
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and time.monotonic() - started < 60
    ours = [line for line in err.splitlines() if line.startswith(("error:", "rank "))]
    assert ours == ["error: rank 1: data file node-local.npz does not exist"], err
    assert not (tmp_path / "runs").exists()  # nothing written, no lock left
