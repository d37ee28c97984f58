"""benchmarks/gpu_verify.py at a tiny size on the CPU: the paired JPEG-vs-exact experiment and
the precision comparison run end to end, on generated stand-ins for the two CIFAR-10 files."""

from __future__ import annotations

import io
import json
import runpy
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, resexp


def fake_cifar(folder: Path, n_train: int = 150, n_test: int = 30) -> Path:
    """cifar10_jpeg_full.npz (every image as JPEG bytes) and cifar10.npz (an exact subset with
    idx_train / idx_test), laid out as ../shared/data's files are."""
    from PIL import Image

    rng = np.random.default_rng(0)
    full, exact = {}, {}
    for split, n, keep in (("train", n_train, n_train - 10), ("test", n_test, n_test - 5)):
        x = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
        y = np.arange(n) % 10
        pieces = []
        for image in x:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=75)
            pieces.append(np.frombuffer(buffer.getvalue(), np.uint8))
        full[f"{split}_jpeg_bytes"] = np.concatenate(pieces)
        full[f"{split}_jpeg_offsets"] = np.concatenate([[0], np.cumsum([len(p) for p in pieces])])
        full[f"y_{split}"] = y
        idx = np.sort(rng.choice(n, keep, replace=False)).astype(np.int32)
        exact |= {f"x_{split}": x[idx], f"y_{split}": y[idx].astype(np.uint8), f"idx_{split}": idx}
    folder.mkdir(parents=True)
    np.savez(folder / "cifar10_jpeg_full.npz", **full)
    np.savez(folder / "cifar10.npz", **exact)
    return folder


@pytest.fixture(scope="module")
def verify():
    return runpy.run_path(str(REPO / "benchmarks" / "gpu_verify.py"))


def test_the_jpeg_subset_holds_the_jpeg_copies_of_exactly_the_exact_images(tmp_path, verify):
    from resexp.data.cifar import load_npz

    data = fake_cifar(tmp_path / "data")
    subset = load_npz(verify["jpeg_subset"](data, tmp_path / "work"), 10)
    exact = np.load(data / "cifar10.npz")
    assert len(subset.x_train) == 140 and len(subset.x_test) == 25
    assert np.array_equal(subset.y_train, exact["y_train"]) and np.array_equal(subset.y_test, exact["y_test"])
    error = np.abs(subset.x_train.astype(int) - exact["x_train"].astype(int)).mean()
    shifted = np.abs(subset.x_train[1:].astype(int) - exact["x_train"][:-1].astype(int)).mean()
    assert error < shifted  # each JPEG decodes close to its own exact image, not its neighbour's


def in_process(monkeypatch, verify, exit_status: int | None = None) -> None:
    """The script's `python -m resexp train ...` run in this process through the CLI's entry point
    (or only answered with `exit_status`): what is tested here is what the script does with the
    runs; the budget's SIGTERM to a real process is resexp's own, tested in test_resume.py."""

    class Run:
        def __init__(self, cmd):
            assert cmd[1:3] == ["-m", "resexp"], cmd
            self.code = resexp(*cmd[3:], cwd=Path.cwd()).code if exit_status is None else exit_status

        def wait(self, timeout=None):
            return self.code

    fake = types.SimpleNamespace(**{**vars(subprocess), "Popen": Run})
    monkeypatch.setitem(verify["main"].__globals__, "subprocess", fake)


@pytest.mark.slow  # 7 s: the GPU verification script's CPU parts
def test_data_and_precision_parts_run_and_write_their_figures(tmp_path, monkeypatch, verify):
    data = fake_cifar(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    in_process(monkeypatch, verify)
    common = ["--data", str(data), "--work", "work", "--out", "out", "--device", "cpu", "--seeds", "0"]
    assert verify["main"]([*common, "--part", "data", "--budget-s", "0"]) == 3  # no budget: nothing ran
    assert not Path("out/verify-data.json").exists()
    tiny = [*common, "--iterations", "4", "--eval-every", "2", "--budget-s", "600"]
    assert verify["main"]([*tiny, "--part", "data", "precision"]) == 0
    figures = json.loads(Path("out/verify-data.json").read_text())
    assert [r["net"] for r in figures["runs"]["exact"]] == ["ResNet-20"]
    assert [r["state"] for label in ("exact", "jpeg") for r in figures["runs"][label]] == ["complete"] * 2
    [penalty] = figures["jpeg - exact"]
    assert penalty == pytest.approx(
        figures["runs"]["jpeg"][0]["test_error"] - figures["runs"]["exact"][0]["test_error"]
    )
    precision = json.loads(Path("out/verify-precision.json").read_text())
    assert set(precision["runs"]) == {"default", "fp32-eager"}  # no CUDA graph on a CPU
    eager = json.loads(next(Path("runs/verify/fp32_eager").rglob("environment.json")).read_text())
    assert eager["speed"]["precision"] == "fp32" and not eager["speed"]["channels_last"]
    report = Path("out/verify.md").read_text()
    assert "## data" in report and "jpeg minus exact, paired by seed" in report and "## precision" in report


JUNIT = '<testsuites><testsuite tests="{tests}" failures="{failures}" errors="0" skipped="{skipped}"/></testsuites>'


@pytest.mark.parametrize(
    ("tests", "failures", "skipped", "code", "expected"),
    [
        (6, 0, 6, 0, "pytest -m gpu: 0 passed, 0 failed, 6 skipped: nothing was measured (no CUDA device here?)"),
        (6, 1, 0, 1, "pytest -m gpu: 5 passed, 1 failed, 0 skipped (exit status 1)"),
        (6, 0, 0, 0, None),
    ],
)
def test_the_gpu_tests_part_fails_closed(
    tmp_path, monkeypatch, capsys, verify, tests, failures, skipped, code, expected
):
    """Every GPU test skipped (no CUDA device) is not a success: exit 1 and the reason."""

    def pytest_run(cmd):
        report = next(a.split("=", 1)[1] for a in cmd if a.startswith("--junitxml="))
        Path(report).write_text(JUNIT.format(tests=tests, failures=failures, skipped=skipped))
        return code

    monkeypatch.setitem(verify["main"].__globals__, "subprocess", types.SimpleNamespace(call=pytest_run))
    status = verify["main"](["--part", "pytest", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    if expected is None:
        assert status == 0 and err == "" and "6 passed" in (tmp_path / "verify-pytest.txt").read_text()
    else:
        assert status == 1 and err == f"error: pytest: {expected}"


def test_a_failed_run_fails_the_part_and_a_rerun_replaces_its_section(tmp_path, monkeypatch, capsys, verify):
    """A run that fails is exit 1 with the run's label (not "run the same command again"); a part
    measured twice has one section in verify.md; a missing data file is one line."""
    monkeypatch.chdir(tmp_path)
    assert verify["main"](["--data", "nowhere", "--part", "data"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: --data nowhere lacks cifar10.npz, cifar10_jpeg_full.npz (the CIFAR-10 files of ../shared/data)"
    )
    data = fake_cifar(tmp_path / "data")
    common = ["--data", str(data), "--work", "work", "--out", "out", "--seeds", "0", "--part", "precision"]

    in_process(monkeypatch, verify, exit_status=1)
    assert verify["main"]([*common, "--device", "cuda"]) == 1
    assert "error: precision: default: resexp train exited with status 1" in capsys.readouterr().err
    in_process(monkeypatch, verify, exit_status=0)
    monkeypatch.setitem(verify["main"].__globals__, "results", lambda run: [])  # nothing to read back
    for _ in range(2):
        assert verify["main"]([*common, "--device", "cpu"]) == 0
    assert Path("out/verify.md").read_text().count("## precision") == 1
