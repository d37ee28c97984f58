"""Property: whatever a user types, `resexp train` ends in exit 0, or in exactly one error line
with no traceback; and a failure before training leaves nothing on disk. Hypothesis draws override
sets, valid and invalid values of every public field, on top of a run that takes a fraction of a
second; through the CLI's entry point, in-process."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import TINY, folder, resexp, write_npz

BASE = [
    "data=synthetic",
    "data.train_size=64",
    "data.test_size=16",
    "data.batch_size=16",
    "model.depth=8",
    "schedule.iterations=2",
    "device=cpu",
]
NPZ = Path(tempfile.mkdtemp(prefix="resexp-properties-")) / "small.npz"
write_npz(NPZ, n_train=64, n_test=16)

# Every public field: values that are valid on a CPU, then values that are not.
FIELDS = {
    "model": ["cifar", "imagenet", "resnet"],
    "model.depth": ["8", "14", "18", "21", "0", "-4", "deep", "1000000004", "1.5"],
    "model.mode": ["plain", "residual", "highway", "PLAIN"],
    "model.shortcut": ["A", "B", "C", "null", "D", "a"],
    "model.sync_bn": ["true", "false", "maybe"],
    "model.norm": ["batch", "none", "layer"],
    "model.init": ["he", "xavier", "zero_gamma", "skipinit", "fixup", "orthogonal"],
    "model.block": ["post", "pre", "mid"],
    "model.body": ["null", "basic", "bottleneck", "wide"],
    "model.family": ["cifar", "imagenet", "vgg"],
    "data.name": ["synthetic", "cifar10", "svhn"],
    "schedule.name": ["multistep", "plateau", "cosine"],
    "data": ["synthetic", "cifar10", "cifar100", "imagenet", "mnist"],
    "data.root": [str(NPZ), str(NPZ.parent), "/nonexistent", str(NPZ.parent / "missing.npz")],
    "data.file": ["small.npz", "null", "missing.npz", "../x"],
    "data.batch_size": ["8", "16", "0", "-1", "1000000", "big"],
    "data.eval_batch_size": ["1", "64", "0"],
    "data.subset": ["32", "null", "0", "100000"],
    "data.val_split": ["0", "16", "-1", "64", "100000"],
    "data.augment": ["true", "false", "maybe"],
    "data.normalize": ["pixel_mean", "channel", "zca"],
    "data.ten_crop": ["false", "true", "sometimes"],
    "data.lighting": ["0", "0.1", "-1", "nan", "bright"],
    "data.test_scales": ["null", "[32,40]", "[]", "[0]", "5"],
    "data.scale_min": ["32", "256", "0"],
    "data.scale_max": ["48", "480", "8"],
    "data.crop_size": ["32", "224", "-1"],
    "data.download": ["false", "maybe"],
    "data.workers": ["0", "2", "-1", "999"],
    "data.image_size": ["8", "32", "0", "100000"],
    "data.num_classes": ["2", "10", "1", "0"],
    "data.train_size": ["32", "64", "0", "8"],
    "data.test_size": ["8", "0", "-3"],
    "optim.lr": ["0.01", "0.1", "0", "-0.1", "inf", "nan", "fast"],
    "optim.momentum": ["0", "0.9", "1", "5", "-0.5"],
    "optim.weight_decay": ["0", "1e-4", "-1", "inf"],
    "schedule": ["multistep", "plateau", "cosine"],
    "schedule.iterations": ["2", "3", "0", "-5", "1e3"],
    "schedule.milestones": ["[1]", "null", "[]", "[2]", "[1,1]", "[0]", "5"],
    "schedule.gamma": ["0.1", "0.5", "0", "1", "2"],
    "schedule.monitor": ["train/error", "test/loss", "val/error", "accuracy"],
    "schedule.patience": ["1", "5", "0", "-2"],
    "schedule.min_delta": ["0", "0.1", "-1", "nan"],
    "schedule.min_lr": ["0", "1e-4", "-1"],
    "schedule.warmup_lr": ["null", "0.01", "0", "-0.01"],
    "schedule.warmup_until_error": ["80", "100", "0", "101"],
    "speed.precision": ["auto", "fp32", "bf16", "fp8"],
    "speed.channels_last": ["true", "false", "null", "maybe"],
    "speed.compile": ["auto", "off", "fastest"],
    "speed.fused_optimizer": ["true", "false", "null"],
    "speed.cuda_graph": ["false", "null", "true"],
    "speed.cudnn_benchmark": ["true", "false"],
    "log.grad_norms": ["true", "false", "often"],
    "name": ["default", "a/b", "x-1.2", "..", "../../escape", "/abs", "a//b", "'a b'"],
    "seed": ["0", "7", "4294967295", "-1", "4294967296", "1.5"],
    "device": ["auto", "cpu", "cuda", "mps", "meta", "cpu:0", "gpu"],
    "eval_every": ["1", "null", "0", "-1"],
    "resume": ["null", "/nonexistent.pt", str(NPZ)],
    "+experiment": ["cifar_quick", "fig99"],
    "+bogus": ["1"],
}

overrides = st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=4).flatmap(
    lambda keys: st.tuples(*[st.sampled_from(FIELDS[k]).map(lambda v, k=k: f"{k}={v}") for k in keys])
)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=overrides)
def test_every_override_set_ends_in_success_or_one_line_and_a_failed_start_leaves_nothing(drawn):
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        outcome = resexp("train", *BASE, *drawn, cwd=cwd)
        messages = [line for line in outcome.lines if not line.startswith("[")]  # evaluation lines start with [
        event(f"exit {outcome.code}")
        assert "Traceback" not in outcome.stderr and "Error executing job" not in outcome.stderr
        assert "an unexpected error" not in outcome.stderr, (drawn, outcome.stderr)
        if outcome.code == 0:
            assert all("complete already" not in m for m in messages), drawn
            assert list(cwd.rglob("status.json")), drawn
            return
        assert outcome.code == 1, (drawn, outcome.code, outcome.stderr)
        assert len(messages) == 1 and messages[0].startswith(("error: ", "diverged: ")), (drawn, outcome.stderr)
        if not list(cwd.rglob("status.json")):  # failed before training: no trace at all
            assert not list(cwd.rglob("*")), (drawn, sorted(map(str, cwd.rglob("*"))))
        assert not (cwd.parent / "escape").exists()


def test_the_property_test_draws_every_field_of_the_schema():
    import dataclasses

    from resexp.config import Config

    def fields(cls, prefix=""):
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                yield from fields(type(default), f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    assert set(fields(Config)) - set(FIELDS) == set()


@pytest.mark.parametrize("text", ["model.depth=8 data=synthetic", "=", "model..depth=1", "~model", "data@x=y"])
def test_strange_override_syntax_is_one_line_too(tmp_path, text):
    outcome = resexp("train", *BASE, *text.split(), cwd=tmp_path)
    assert outcome.code in (0, 1) and "Traceback" not in outcome.stderr
    assert outcome.code == 0 or len(outcome.lines) == 1, outcome.stderr


# --------------------------------------------------------------------------- the other commands


def on_a_copy(tiny_sweep: Path, *args: str):
    """`resexp ARGS` in a copy of the tiny sweep: the outcome, and the files it added or changed."""
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp) / "w"
        shutil.copytree(tiny_sweep, cwd)
        before = snapshot(cwd)
        outcome = resexp(*args, cwd=cwd)
        return outcome, {k for k, v in snapshot(cwd).items() if before.get(k) != v}


def snapshot(cwd: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cwd)): p.read_bytes() for p in cwd.rglob("*") if p.is_file()}


def one_line_or_success(outcome, args) -> None:
    assert "Traceback" not in outcome.stderr, (args, outcome.stderr)
    assert "an unexpected error" not in outcome.stderr, (args, outcome.stderr)
    if outcome.code != 0:
        errors = [line for line in outcome.lines if line.startswith("error: ")]
        assert outcome.code == 1 and errors == [outcome.lines[-1]], (args, outcome.code, outcome.stderr)


OPTIONS = {
    "analyze": {
        "KIND": ["responses", "gradients", "lesion", "landscape", "signal", "paths", "ensembles"],
        "FOLDER": ["runs/default", "runs/default/synthetic", "nowhere", "runs"],
        "--images": ["8", "0", "-3", "1000000", "x"],
        "--draws": ["1", "0", "101", "x"],
        "--samples": ["1", "4", "0", "1001", "x"],
        "--grid": ["2", "3", "1", "102", "100000"],
        "--span": ["0.5", "0", "-1", "nan", "inf", "x"],
        "--workers": ["1", "0", "999"],
        "--nets": ["plain-8", "ResNet-8", "ResNet-99", ","],
        "--seeds": ["0", "1", "x", "0,,1"],
        "--device": ["cpu", "auto", "mps", "cuda:7", "gpu"],
        "--data-root": ["nowhere", "."],
        "--at-init": [None],
    },
    "report": {"FOLDER": ["runs/default", "runs", "nowhere"], "--format": ["markdown", "csv", "json", "html", "pdf"]},
    "export": {
        "RUN": [folder(*TINY, "model.mode=plain"), folder(*TINY, "model.mode=residual"), "runs/default", "no"],
        "OUT": ["net.pt", "runs", "no/such/net.pt", "runs/default/analysis.pt"],
        "--to": ["state_dict", "torchvision", "onnx"],
    },
    "plot": {"FOLDER": ["runs/default", "nowhere"], "--out": ["figs/a", "/proc/no/such"]},
    "eval": {
        "FOLDER": ["runs/default", folder(*TINY, "model.mode=plain"), "nowhere"],
        "OVERRIDES": [
            "data.ten_crop=true",
            "data.test_scales=[32]",
            "model.depth=20",
            "seed=1",
            "device=cpu",
            "device=cuda:7",
            "data.eval_batch_size=0",
            "data.eval_batch_size=7",
            "data.workers=x",
        ],
        "--best": [None],
    },
    "bench": {
        "--depths": ["8", "8,14", "21", "abc", "1000000004", ""],
        "--modes": ["plain", "residual,plain", "highway"],
        "--iterations": ["1", "0", "x"],
        "--warmup": ["0", "-1"],
        "--reference-iterations": ["1", "0"],
        "--workers": ["0", "-1", "999"],
        "--images": ["64", "10", "100000000"],
        "--no-reference": [None],
        "OVERRIDE": ["device=cpu", "device=mps", "data.batch_size=32", "speed.precision=fp32", "speed.compile=x"],
    },
}


def command(name: str):
    """A draw of one command's options: its positional arguments first, each option at most once."""
    table = OPTIONS[name]
    positional = [k for k in table if k.isupper()]
    options = sorted(k for k in table if not k.isupper())
    return st.tuples(
        *[st.sampled_from(table[k]) for k in positional if k != "OVERRIDE"],
        st.dictionaries(st.sampled_from(options), st.none(), max_size=4).flatmap(
            lambda keys: st.tuples(*[st.sampled_from(table[k]).map(lambda v, k=k: (k, v)) for k in keys])
        ),
    ).map(lambda drawn: [name, *drawn[:-1], *[x for k, v in drawn[-1] for x in (k, v) if x is not None]])


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.one_of(command("analyze"), command("report"), command("plot")))
def test_every_option_of_analyze_report_and_plot_ends_in_success_or_one_line(tiny_sweep, args):
    if args[0] == "analyze" and "--workers" not in args:
        args = [*args, "--images", "8"] if "--images" not in args else args  # seconds, not minutes
    outcome, changed = on_a_copy(tiny_sweep, *args)
    event(f"{args[0]} exit {outcome.code}")
    one_line_or_success(outcome, args)
    if outcome.code != 0 and args[0] == "analyze":
        assert not [c for c in changed if "/analysis/" in c and "chunks" not in c], (args, changed)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(args=command("export"))
def test_every_option_of_export_ends_in_a_file_or_one_line_and_nothing_written(tiny_sweep, args):
    outcome, changed = on_a_copy(tiny_sweep, *args)
    event(f"export exit {outcome.code}")
    one_line_or_success(outcome, args)
    assert changed == ({args[2]} if outcome.code == 0 else set()), (args, changed)  # OUT alone, or nothing


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(args=command("eval"))
def test_every_option_of_eval_ends_in_numbers_or_one_line_and_no_training_file_changes(tiny_sweep, args):
    outcome, changed = on_a_copy(tiny_sweep, *args)
    event(f"eval exit {outcome.code}")
    one_line_or_success(outcome, args)
    assert all("/eval/" in c and c.endswith(".json") for c in changed), (args, changed)
    assert bool(changed) == (outcome.code == 0), (args, changed)


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(args=command("bench"))
def test_every_option_of_bench_ends_in_success_or_one_line(tmp_path_factory, args):
    args = [*args, "--iterations", "1", "--warmup", "0", "--images", "64", "data.batch_size=16", "device=cpu"]
    args = [a for i, a in enumerate(args) if a not in ("--iterations", "--warmup", "--images") or a not in args[:i]]
    outcome = resexp(*args, "--no-reference", cwd=tmp_path_factory.mktemp("bench"))
    event(f"bench exit {outcome.code}")
    one_line_or_success(outcome, args)


# --------------------------------------------------------------------------- damaged run folders

RUN_FILES = ["config.yaml", "data.json", "metrics.jsonl", "status.json", "last.pt", "prev.pt", "environment.json"]
DAMAGE = ["delete", "truncate", "empty", "garbage", "edit"]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\xff\xfe not what it was \x00")
    else:  # a digit changed: a number edited by hand
        text = bytearray(data)
        at = next((i for i in range(len(text) // 3, len(text)) if chr(text[i]).isdigit()), None)
        if at is not None:
            text[at] = ord("7") if text[at] != ord("7") else ord("3")
        path.write_bytes(bytes(text))


READERS = ["report", "plot", "analyze", "eval", "export"]


@settings(max_examples=24, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    file=st.sampled_from(RUN_FILES),
    how=st.sampled_from(DAMAGE),
    command=st.sampled_from(["train", *READERS]),
)
def test_a_damaged_run_folder_is_resumed_exactly_or_refused_in_one_line(tiny_sweep, file, how, command):
    """Whatever one file of a finished run suffered, `resexp train` again either leaves the run as
    it was trained (the same metrics, row for row) or says in one line why not, touching nothing;
    and every reader of runs (report, plot, analyze, eval, export) either reads the run as it was
    trained, or skips it with a warning that names it, or says in one line why not: none believes
    what train refuses (before: an edited config.yaml without status.json, or an edited test error,
    were reported and plotted as trained)."""
    run_dir = next(p.parent for p in (tiny_sweep / "runs").rglob("metrics.jsonl") if "residual" in str(p))
    rows = (run_dir / "metrics.jsonl").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp) / "w"
        shutil.copytree(tiny_sweep, cwd)
        copy = cwd / run_dir.relative_to(tiny_sweep)
        damage(copy / file, how)
        before = snapshot(copy)
        relative = str(copy.relative_to(cwd))
        args = {
            "train": ["train", *TINY, "model.mode=residual"],
            "report": ["report", "runs", "--format", "json"],
            "plot": ["plot", "runs"],
            "analyze": ["analyze", "signal", "runs", "--images", "8"],
            "eval": ["eval", "runs"],
            "export": ["export", relative, "net.pt"],
        }[command]
        outcome = resexp(*args, cwd=cwd)
        event(f"{command} {file} {how}: exit {outcome.code}")
        one_line_or_success(outcome, (file, how))
        if command == "train" and outcome.code == 0:
            done = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
            assert [{k: v for k, v in r.items() if k != "time"} for r in done] == [
                {k: v for k, v in json.loads(line).items() if k != "time"} for line in rows.splitlines()
            ], (file, how)
        if command == "train" and outcome.code != 0:
            assert snapshot(copy) == before, (file, how)
        if command in READERS and outcome.code == 0 and command != "plot":
            read = {
                "report": lambda: any(r["mode"] == "residual" for r in json.loads(outcome.stdout)["rows"]),
                "analyze": lambda: "ResNet-8" in outcome.stdout,
                "eval": lambda: (copy / "eval" / "latest.json").exists(),
                "export": lambda: True,
            }[command]()
            skipped = relative in outcome.stderr and "skipping" in outcome.stderr
            assert read != skipped, (command, file, how, outcome.stderr)
            truth = [json.loads(line) for line in rows.splitlines()][-1]
            if command == "report" and outcome.code == 0 and not skipped:
                [row] = [r for r in json.loads(outcome.stdout)["rows"] if r["mode"] == "residual"]
                assert row["final_test_error"][0] == truth["test/error"], (file, how)  # as trained, or not shown
                assert row["final_train_error"][0] == truth["train/error"], (file, how)


def edited_config(run: Path) -> None:
    """status.json gone, config.yaml's lr edited by hand: only the checkpoint remembers the run."""
    (run / "status.json").unlink()
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("lr: 0.1", "lr: 0.5"))


def edited_error(run: Path) -> None:
    """A finished run's last test error edited by hand."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["test/error"] = 1.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("edit", [edited_config, edited_error])
def test_every_reader_refuses_what_train_refuses(tiny_sweep, tmp_path, edit):
    """Before: report, plot and analyze showed the edited run as trained, where train and eval refused it."""
    shutil.copytree(tiny_sweep, tmp_path / "w")
    cwd = tmp_path / "w"
    run = next(p.parent for p in (cwd / "runs").rglob("metrics.jsonl") if "residual" in str(p))
    edit(run)
    name = str(run.relative_to(cwd))
    for args in (
        ["train", *TINY, "model.mode=residual"],
        ["report", "runs"],
        ["plot", "runs"],
        ["analyze", "signal", "runs", "--images", "8"],
        ["eval", "runs"],
        ["export", name, "net.pt"],
    ):
        outcome = resexp(*args, cwd=cwd)
        said = outcome.stderr.replace("\n", " ")
        assert name in said and (args[0] == "train" or "changed after the run wrote it" in said), (args, said)
        assert outcome.code == 1 or args[0] != "train"
        assert "ResNet-8" not in outcome.stdout and not (run / "eval").exists(), (args, outcome.stdout)


# --------------------------------------------------------------------------- names made from options


def option_sets():
    """Options of `resexp analyze` as a user may type them, and overrides of a config."""
    from resexp.analysis.protocol import Options

    floats = st.sampled_from([0.5, 0.25, 1.0, 0.05, 2.0, 1e-05, 0.125])
    options = st.builds(
        Options,
        at_init=st.booleans(),
        images=st.sampled_from([None, 8, 16, 512]),
        draws=st.sampled_from([1, 3, 5]),
        grid=st.sampled_from([3, 21, 51]),
        span=floats,
        workers=st.sampled_from([1, 2]),
        seed=st.sampled_from([0, 1]),
        nets=st.sampled_from([(), ("ResNet-56",), ("ResNet-56", "plain-56"), ("plain-56",)]),
        seeds=st.sampled_from([(), (0,), (0, 1)]),
        per_channel=st.booleans(),
        samples=st.sampled_from([16, 4, 64]),
    )
    overrides = st.lists(
        st.sampled_from(
            [
                "optim.lr=0.05",
                "optim.lr=0.01",
                "optim.lr=0.1",
                "model.depth=20,56",
                "model.depth=56",
                "model.init=zero_gamma",
                "model.norm=none",
                "schedule.milestones=[300,400]",
                "model=imagenet",
                "data.subset=5000",
                "model.mode=plain+residual",
                "model.mode=plain/residual",
            ]
        ),
        unique_by=lambda o: o.partition("=")[0],
        max_size=3,
    )
    return st.tuples(
        st.sampled_from(["responses", "gradients", "lesion", "landscape", "signal", "paths"]),
        options,
        st.one_of(st.none(), overrides),
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(a=option_sets(), b=option_sets())
def test_analyses_with_different_options_never_share_a_file_name(a, b):
    """Before: `--span 0.5` and `--span 0.25` both wrote landscape+grid-3+span-0.json (a decimal
    point taken for a suffix), and optim.lr=0.05 and 0.01 one signal-config file."""
    from resexp.analysis.driver import READS, files, state, typed

    def read(kind, options, configs):  # what the kind reads: what must tell two analyses apart
        return (
            kind,
            state(kind, options, configs),
            tuple(getattr(options, k) for k in READS[kind]),
            (tuple(typed(configs)) if configs is not None else None),
        )

    names = [files(Path("analysis"), *x) for x in (a, b)]
    assert all([p.suffix for p in n] == [".json", ".png", ".svg"] for n in names)
    assert (names[0][0] == names[1][0]) == (read(*a) == read(*b)), (a, b, names)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    which=st.sampled_from(["latest", "best"]),
    ten_crop=st.booleans(),
    scales=st.sampled_from([None, [224], [224, 256], [2242, 56], [22, 4256]]),
    other=st.tuples(st.sampled_from(["latest", "best"]), st.booleans(), st.sampled_from([None, [224], [224, 256]])),
)
def test_evaluations_with_different_protocols_never_share_a_file_name(which, ten_crop, scales, other):
    from resexp.commands.eval import file_stem as stem

    def name(w, t, s):
        return stem(w, {"data.ten_crop": t, "data.test_scales": s})

    same = (which, ten_crop, scales) == other
    assert (name(which, ten_crop, scales) == name(*other)) == same
