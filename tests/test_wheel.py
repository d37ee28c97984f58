"""resexp as an installed package, not a checkout: a wheel built from the sources holds the
configs, and `python -m resexp train` from it works in any directory."""

import shutil
import subprocess
import sys
import zipfile

from conftest import REPO, TINY, folder, process_env


def test_a_wheel_built_from_the_checkout_trains_from_another_directory(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for part in ("resexp", "configs"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    [wheel] = (tmp_path / "dist").glob("resexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(REPO)) for p in (REPO / "resexp").rglob("*.py")}
    configs = {"resexp/" + str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")}
    assert sources <= names and configs <= names and "resexp/configs/experiment/cifar_quick.yaml" in configs
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**process_env(), "PYTHONPATH": str(site)}

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True)

    assert run("-c", "import resexp; print(resexp.__file__)").stdout.startswith(str(site))
    shown = run("-m", "resexp", "train", "--cfg", "job", "model.depth=56", "+experiment=cifar_quick")
    assert shown.returncode == 0, shown.stderr
    assert "depth: 56" in shown.stdout and "subset: 5000" in shown.stdout
    trained = run("-m", "resexp", "train", *TINY, "schedule.iterations=4", "eval_every=2")
    assert trained.returncode == 0, trained.stderr
    run_dir = elsewhere / folder(*TINY, "schedule.iterations=4", "eval_every=2")
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 2
