"""The command line: help texts, `resexp models`, and the error boundary: every mistake one line,
exit status 1, nothing on disk; library errors turned into that line by type, not by text."""

import json

import pytest

from conftest import TINY, leftovers, resexp, resexp_process


def test_models_json_lists_the_variants_with_parameters_and_multiply_adds(tmp_path):
    result = resexp("models", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert all(set(r) == {"family", "depth", "mode", "shortcut", "params", "macs"} for r in rows)
    by_key = {(r["family"], r["depth"], r["mode"], r["shortcut"]): r for r in rows}
    assert by_key[("cifar", 56, "residual", "A")]["params"] == 853018
    assert by_key[("cifar", 56, "plain", "-")]["params"] == 853018
    assert by_key[("cifar", 20, "residual", "A")]["macs"] == 40551040
    assert by_key[("imagenet", 34, "residual", "B")]["params"] == 21797672
    assert len(rows) == 6 * 4 + 5 * 4
    table = resexp("models", cwd=tmp_path)
    assert table.code == 0 and "0.270M" in table.stdout and "11.28G" in table.stdout


def test_help_shows_defaults_written_as_text_not_eaten_as_markup(tmp_path):
    bench = resexp("bench", "--help", cwd=tmp_path)
    for default in ("300 on CUDA, 10 on CPU", "50 on CUDA, 2 on CPU", "min(8, cores)", "speed.precision=fp32"):
        assert default in bench.stdout, default  # written as text, not eaten as rich markup
    plot = resexp("plot", "--help", cwd=tmp_path)
    assert plot.code == 0 and "RUNS_DIR/curves" in plot.stdout


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.depth=21", "model.depth=21 is not a CIFAR depth: valid depths are 6n+2"),
        ("model.mode=highway", "model.mode=highway is not valid: expected one of plain, residual"),
        ("model.depth=deep", "model.depth=deep is not valid: expected an integer"),
        ("optim.lr=fast", "optim.lr=fast is not valid: expected a number"),
        (
            "schedule.milestones=5",
            "schedule.milestones=5 is not valid: expected null or a list of integers, e.g. [100,200]",
        ),
        ("speed.channels_last=maybe", "speed.channels_last=maybe is not valid: expected null or true or false"),
        ("speed.compile=fastest", "expected one of auto, off, default, reduce_overhead, max_autotune"),
        ("model.colour=red", "model.colour is not a field: model has family, depth, mode, shortcut"),
        ("+model.colour=red", "model.colour is not a field: model has family, depth, mode, shortcut"),
        ("+bogus=1", "bogus is not a field: the top level has model, data, optim"),
        ("data=mnist", "data=mnist is not a config: available options are cifar10, cifar100, imagenet, synthetic"),
        ("+experiment=fig99", "experiment=fig99 is not a config: available options are cifar_fig1"),
        ("model.depth=[", "an override does not parse"),
        ("model.depth=8,14", "model.depth=8,14 is a sweep: add -m"),
        ("schedule.milestones=[100]", "must lie inside the schedule"),
        ("speed.cuda_graph=true", "speed.cuda_graph=true needs a CUDA device, not cpu"),
        ("name=../../escape", "must be a folder name below runs/"),
        ("model.depth=1000000004", "needs about"),
        ("data.image_size=4 data.batch_size=1", "leaves 1 value per channel in the last stage (1x1)"),
    ],
)
def test_mistakes_end_in_one_line_and_leave_nothing_behind(tmp_path, override, message):
    result = resexp("train", *TINY, *override.split(), cwd=tmp_path)
    assert result.code == 1
    assert result.lines == [result.lines[0]] and message in result.lines[0], result.stderr
    assert leftovers(tmp_path) == [] and not (tmp_path.parent / "escape").exists()


def test_a_sweep_is_checked_whole_before_its_first_job_trains(tmp_path):
    result = resexp("train", "-m", *TINY, "model.depth=8,21", cwd=tmp_path)
    assert result.code == 1 and len(result.lines) == 1
    assert "model.depth=21 is not a CIFAR depth" in result.stderr and "(job 1: " in result.stderr
    assert leftovers(tmp_path) == []  # depth 8 did not train, no multirun.yaml either


@pytest.mark.parametrize(
    "launcher,message",
    [
        (
            ["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=0"],
            "hydra.launcher.cpus_per_task=0 must be at least 1 (each job's threads)",
        ),
        (
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"],
            "hydra.launcher.n_jobs=0 runs nothing: give the runs side by side (e.g. 2), or -1 for one per core",
        ),
    ],
)
def test_a_sweep_with_no_cpus_per_job_or_no_jobs_is_one_line_and_submits_nothing(tmp_path, launcher, message):
    result = resexp("train", "-m", *launcher, *TINY, "seed=0,1", cwd=tmp_path)
    assert result.code == 1
    assert result.lines == [f"error: {message}"]
    assert leftovers(tmp_path) == []


def test_printing_the_config_of_a_sweep_says_to_drop_m(tmp_path):
    result = resexp("train", "-m", *TINY, "seed=0,1", "--cfg", "job", cwd=tmp_path)
    assert result.code == 1
    assert result.lines == ["error: --cfg prints one job and cannot be combined with -m: drop -m (and the comma lists)"]
    assert leftovers(tmp_path) == []


def jpeg_npz(path, broken: int | None = None):
    """A CIFAR-shaped .npz of JPEG bytes (as cifar10_jpeg_full.npz), image `broken` not a JPEG."""
    import io

    import numpy as np
    from PIL import Image

    arrays = {}
    for split, n in (("train", 40), ("test", 20)):
        pieces = []
        for i in range(n):
            buffer = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(buffer, format="JPEG")
            pieces.append(np.frombuffer(b"not a jpeg" if i == broken else buffer.getvalue(), np.uint8))
        arrays[f"{split}_jpeg_bytes"] = np.concatenate(pieces)
        arrays[f"{split}_jpeg_offsets"] = np.concatenate([[0], np.cumsum([len(p) for p in pieces])])
        arrays[f"y_{split}"] = np.arange(n) % 10
    np.savez(path, **arrays)
    return path


def test_a_failure_inside_hydras_job_is_one_line_too(tmp_path):
    """An image that does not decode shows only when the job loads its data, after Hydra made the
    run directory: still one line (no Hydra 'Error executing job'), exit 1, and the folders Hydra
    made are gone. (The shapes and labels of every job's data are checked before any trains.)"""
    path = jpeg_npz(tmp_path / "broken.npz", broken=7)
    result = resexp("train", f"data.root={path}", "data.batch_size=8", "device=cpu", cwd=tmp_path)
    assert result.code == 1 and result.lines == [
        f"error: {path} could not be read as an .npz file of arrays (UnidentifiedImageError); is it truncated?"
    ]
    assert leftovers(tmp_path) == []
    sweep = resexp("train", "-m", f"data.root={path}", "data.batch_size=8", "device=cpu", "seed=0,1", cwd=tmp_path)
    assert sweep.code == 1 and len(sweep.lines) == 2 and "Error executing job" not in sweep.stderr
    assert leftovers(tmp_path) == []


def test_every_job_of_a_sweep_has_its_data_checked_before_the_first_trains(tmp_path):
    """-m data=cifar10,cifar100 with a CIFAR-10 file under the CIFAR-100 name: refused before cifar10 trains."""
    from conftest import write_npz

    write_npz(tmp_path / "cifar10.npz")
    write_npz(tmp_path / "cifar100.npz")  # ten classes, not a hundred
    result = resexp(
        "train", "-m", "data=cifar10,cifar100", f"data.root={tmp_path}", "data.batch_size=8", "device=cpu", cwd=tmp_path
    )
    assert result.code == 1 and len(result.lines) == 1, result.stderr
    assert "holds 10 classes, not the 100 of this dataset" in result.stderr and "(job 1: data=cifar100" in result.stderr
    assert leftovers(tmp_path) == []


def test_one_line_maps_library_errors_by_type():
    from hydra.errors import MissingConfigException

    from resexp.errors import ConfigError, one_line

    assert one_line(ConfigError("x=1 is wrong\nsecond line")) == "x=1 is wrong"
    assert one_line(FileNotFoundError(2, "No such file or directory", "/a/b")) == "No such file or directory: /a/b"
    missing = MissingConfigException("any text at all", missing_cfg_file="data/x", options=["base_data", "cifar10"])
    assert one_line(missing) == "data=x is not a config: available options are cifar10"
    assert one_line(ZeroDivisionError("division by zero")).startswith("ZeroDivisionError: division by zero")


def test_the_installed_command_prints_one_line_and_exits_1(tmp_path):
    """The process boundary itself: what a shell user sees, with nothing else on stderr."""
    result = resexp_process("train", "model.depth=21", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        "error: model.depth=21 is not a CIFAR depth: valid depths are 6n+2 for n >= 1, e.g. 8, 14, 20, 32, 44, 56, "
        "110, 1202"
    )
    assert leftovers(tmp_path) == []


def test_every_module_imports_where_there_is_no_fcntl(tmp_path):
    """Windows has no fcntl: resexp still imports there (its run lock is filelock's). The import
    machinery is what is tested, so a fresh interpreter, with fcntl made unimportable."""
    import subprocess
    import sys

    from conftest import REPO, process_env

    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "resexp").rglob("*.py")
        if p.name not in ("__main__.py",)
    )
    code = "import sys; sys.modules['fcntl'] = None\n" + "".join(f"import {m}\n" for m in modules)
    code += "from resexp.rundir.folder import RunLock\nimport pathlib\nwith RunLock(pathlib.Path(sys.argv[1])): pass\n"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], env=process_env(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cfg", "job", "model.depth=21"], "model.depth=21 is not a CIFAR depth"),
        (["--cfg", "job", "seed=-5", "optim.lr=nan"], "seed=-5 must be at least 0"),
        (["--bogus"], "--bogus is not an option of resexp train"),
        (["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=0", "seed=0,1"], "timeout_min=0 must be"),
    ],
)
def test_printing_a_config_checks_it_and_launcher_options_are_checked_first(tmp_path, args, message):
    """Before: --cfg job printed invalid configs with exit 0, and timeout_min=0 left multirun.yaml,
    .submitit/ and a literal %j/ folder."""
    result = resexp("train", *TINY, *args, cwd=tmp_path)
    assert result.code == 1 and len(result.lines) == 1 and message in result.lines[0], result.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["train", "report", "plot", "analyze", "bench", "models"])
def test_every_command_has_debug_for_the_traceback(tmp_path, command):
    args = {
        "train": ["model.depth=21"],
        "report": ["nowhere"],
        "plot": ["nowhere"],
        "analyze": ["responses", "nowhere"],
        "bench": ["--depths", "21"],
        "models": [],
    }[command]
    from resexp.errors import UserError

    if command == "models":
        assert resexp(command, "--debug", "--json", cwd=tmp_path).code == 0
        return
    with pytest.raises((UserError, ValueError)):
        resexp(command, *args, "--debug", cwd=tmp_path)


def test_report_goes_on_past_runs_it_cannot_read(tiny_run, tmp_path):
    """A metrics.jsonl that cannot be read (here a folder by that name) and a config.yaml that is
    not UTF-8 are named, one warning each; an analysis result of the wrong shape is left out of the
    HTML page with a warning (before: tracebacks)."""
    import shutil

    runs = tmp_path / "runs"
    for name in ("unreadable", "latin1", "fine"):
        shutil.copytree(tiny_run[0], runs / name / tiny_run[0].name)
    (runs / "unreadable" / tiny_run[0].name / "metrics.jsonl").unlink()
    (runs / "unreadable" / tiny_run[0].name / "metrics.jsonl").mkdir()
    (runs / "latin1" / tiny_run[0].name / "config.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (runs / "analysis").mkdir()
    (runs / "analysis" / "lesion.json").write_text('{"records": 3}')
    (runs / "analysis" / "lesion.png").write_bytes(b"")
    result = resexp("report", "runs", "--format", "html", cwd=tmp_path)
    assert result.code == 0, result.stderr
    warnings = [line for line in result.lines if line.startswith("warning")]
    assert len(warnings) == 3 and "Traceback" not in result.stderr
    assert any("unreadable" in w and "metrics.jsonl cannot be read" in w for w in warnings)
    assert any("latin1" in w and "config.yaml cannot be read" in w for w in warnings)
    assert any("lesion.json: it is not an analysis result" in w for w in warnings)
    assert (runs / "report.html").exists()
