"""The command line: help texts and `resexp models`."""

import json

from conftest import resexp


def test_models_json_lists_the_variants_with_parameters_and_multiply_adds(tmp_path):
    result = resexp("models", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert all(set(r) == {"family", "depth", "mode", "shortcut", "params", "macs"} for r in rows)
    by_key = {(r["family"], r["depth"], r["mode"], r["shortcut"]): r for r in rows}
    assert by_key[("cifar", 56, "residual", "A")]["params"] == 853018
    assert by_key[("cifar", 56, "plain", "-")]["params"] == 853018
    assert by_key[("imagenet", 34, "residual", "B")]["params"] == 21797672
    assert len(rows) == 6 * 4 + 5 * 4


def test_models_table_and_help_texts(tmp_path):
    table = resexp("models", cwd=tmp_path)
    assert table.returncode == 0 and "0.270M" in table.stdout and "imagenet" in table.stdout
    top = resexp("--help", cwd=tmp_path)
    assert top.returncode == 0 and "train" in top.stdout and "models" in top.stdout
    train = resexp("train", "--help", cwd=tmp_path)
    assert train.returncode == 0 and "--multirun" in train.stdout and "model.depth=56" in train.stdout


def test_bench_and_plot_help_show_their_device_dependent_defaults(tmp_path):
    """Defaults written as text (not values) are shown, not swallowed as rich markup."""
    bench = resexp("bench", "--help", cwd=tmp_path)
    assert bench.returncode == 0
    for default in ("300 on CUDA, 10 on CPU", "50 on CUDA, 2 on CPU", "min(8, cores)", "on for CUDA"):
        assert default in bench.stdout, default
    plot = resexp("plot", "--help", cwd=tmp_path)
    assert plot.returncode == 0 and "RUNS_DIR/curves" in plot.stdout
