"""`resexp report` and `resexp plot` on fabricated run directories: the right numbers, verdicts,
figure files, and honest handling of an unfinished and a diverged run."""

import json
import math

import pytest
import yaml

from conftest import resexp
from resexp.commands.report import render, summarise, verdicts
from resexp.rundir.read import find_runs as find


def find_runs(root, warnings=None):
    return find(root, (warnings if warnings is not None else []).append)


def fake_run(
    root, mode, depth, seed, train_errors, test_errors, status="complete", iterations=None, shortcut="A", data="cifar10"
):
    """A run directory as resexp train writes it, with evaluations every 100 iterations."""
    name = f"{mode}-{depth}{'' if mode == 'plain' else shortcut}_s{seed}"
    d = root / data / name
    d.mkdir(parents=True)
    steps = [100 * (i + 1) for i in range(len(train_errors))]
    config = {
        "model": {"family": "cifar", "depth": depth, "mode": mode, "shortcut": shortcut},
        "data": {"name": data},
        "seed": seed,
        "schedule": {"iterations": iterations or steps[-1]},
    }
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [
        {
            "step": s,
            "epoch": s / 50,
            "lr": 0.1,
            "train/loss": 1.0 if math.isfinite(tr) else tr,
            "train/error": tr,
            "test/loss": 1.0,
            "test/error": te,
            "time": s / 10.0,
        }
        for s, tr, te in zip(steps, train_errors, test_errors, strict=True)
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "status.json").write_text(json.dumps({"status": status, "step": steps[-1]}))
    return d


@pytest.fixture
def fake_sweep(tmp_path):
    """plain/residual x 20/56 x seeds 0, 1: plain-56 trains worse than plain-20, residual-56 better."""
    for seed, jitter in ((0, 0.0), (1, 1.0)):
        fake_run(tmp_path, "plain", 20, seed, [60, 30 + jitter], [62, 35 + jitter])
        fake_run(tmp_path, "plain", 56, seed, [80, 40 + jitter], [81, 44 + jitter])
        fake_run(tmp_path, "residual", 20, seed, [55, 25 + jitter], [57, 30 + jitter])
        fake_run(tmp_path, "residual", 56, seed, [50, 20 + jitter], [52, 27 + jitter])
    return tmp_path


def test_report_numbers_are_means_and_stds_over_seeds(fake_sweep):
    rows = {(r["mode"], r["depth"]): r for r in summarise(find_runs(fake_sweep))}
    plain56 = rows[("plain", 56)]
    assert plain56["n"] == 2 and plain56["complete"] == 2 and plain56["seeds"] == [0, 1]
    assert plain56["final_train_error"] == pytest.approx((40.5, math.sqrt(0.5)))
    assert plain56["settings"] == "-" and plain56["missing"] == [] and plain56["unfinished"] == []
    assert plain56["final_test_error"][0] == pytest.approx(44.5)
    assert plain56["best_test_error"][0] == pytest.approx(44.5)
    assert plain56["paper_test_error"] == 13.5 and rows[("residual", 56)]["paper_test_error"] == 6.97


def test_verdict_says_degradation_reproduced_with_the_gaps(fake_sweep):
    [line] = verdicts(summarise(find_runs(fake_sweep)))
    assert line.startswith("cifar10/cifar: degradation reproduced: ")
    assert "plain-56 training error above plain-20 by 10.00 points" in line
    assert "residual-56 training error below residual-20 by 5.00 points" in line
    assert "residual-56 training error below plain-56 by 20.00 points" in line


def test_verdict_when_depth_does_not_hurt_or_gaps_are_noise(tmp_path):
    for seed, jitter in ((0, 0.0), (1, 0.5)):
        fake_run(tmp_path, "plain", 20, seed, [30 + jitter], [35])
        fake_run(tmp_path, "plain", 56, seed, [25 + jitter], [33])
    [line] = verdicts(summarise(find_runs(tmp_path)))
    assert "degradation NOT reproduced" in line and "plain-56 training error below plain-20 by 5.00" in line
    noisy = tmp_path / "noisy"
    for seed, (a, b) in enumerate(((30, 31), (40, 29))):
        fake_run(noisy, "plain", 20, seed, [a], [a])
        fake_run(noisy, "plain", 56, seed, [b], [b])
    [line] = verdicts(summarise(find_runs(noisy)))
    assert "within seed noise" in line and "NOT reproduced" in line


def test_unfinished_and_diverged_runs_are_named_and_kept_out_of_means(fake_sweep):
    fake_run(fake_sweep, "plain", 110, 0, [90], [90], status="running", iterations=200)
    fake_run(fake_sweep, "plain", 110, 1, [85, float("nan")], [85, 90], status="diverged")
    text = render(find_runs(fake_sweep), "markdown")
    assert "plain-110_s0: incomplete (100/200 iterations)" in text
    assert "plain-110_s1: diverged at iteration 200" in text
    row = next(r for r in summarise(find_runs(fake_sweep)) if r["depth"] == 110)
    assert row["n"] == 2 and row["diverged"] == 1 and row["complete"] == 0
    assert row["final_train_error"][0] == 90 and math.isnan(row["final_train_error"][1])  # the unfinished run's
    assert "plain-110 training error above plain-20 by 59.50 points" in text  # deepest plain net present
    assert "[partial: 1 run(s) incomplete]" in text


def test_report_formats_through_the_cli(fake_sweep):
    as_json = json.loads(resexp("report", str(fake_sweep), "--format", "json", cwd=fake_sweep).stdout)
    assert len(as_json["rows"]) == 4 and as_json["verdicts"][0].startswith("cifar10/cifar: degradation reproduced")
    as_csv = resexp("report", str(fake_sweep), "--format", "csv", cwd=fake_sweep).stdout.splitlines()
    assert as_csv[0].startswith("data,net,mode,depth") and len(as_csv) == 5
    assert "40.50 ± 0.71" in as_csv[2]
    bad = resexp("report", str(fake_sweep / "nothing"), cwd=fake_sweep)
    assert bad.code == 1 and bad.lines == [f"error: {fake_sweep / 'nothing'} is not a folder"]


def test_plot_writes_png_and_svg_for_finished_and_partial_runs(fake_sweep, tmp_path):
    fake_run(fake_sweep, "plain", 110, 0, [90], [90], status="running", iterations=200)
    result = resexp("plot", str(fake_sweep), cwd=fake_sweep)
    assert result.code == 0, result.stderr
    png, svg = fake_sweep / "curves.png", fake_sweep / "curves.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = svg.read_text()
    assert "plain-56 (2 seeds)" in text and "ResNet-56 (2 seeds)" in text and "plain-110" in text
    out = tmp_path / "figs" / "fig6"
    assert resexp("plot", str(fake_sweep), "--out", str(out), cwd=fake_sweep).code == 0
    assert (out.parent / "fig6.png").exists() and (out.parent / "fig6.svg").exists()


def test_malformed_runs_are_flagged_once_each_and_the_rest_reported(fake_sweep):
    """A torn last line is a crash's trace: the rows before it count, and the run is not
    complete unless its last good row reaches its iteration count. Other malformed files are
    left out, one warning each; report and plot go on with the rest."""
    torn = fake_run(fake_sweep, "plain", 110, 0, [90, 80], [90, 80], iterations=200)
    (torn / "metrics.jsonl").write_text((torn / "metrics.jsonl").read_text().splitlines()[0] + '\n{"step": 200, "ep')
    for seed, line in enumerate(["garbage", "null", "[1, 2, 3]", '{"step": 25}']):
        bad = fake_run(fake_sweep, "plain", 44, seed, [70, 60, 50], [70, 60, 50])
        text = (bad / "metrics.jsonl").read_text().splitlines()
        (bad / "metrics.jsonl").write_text("\n".join([text[0], line, *text[1:]]) + "\n")
    (fake_run(fake_sweep, "plain", 32, 0, [60], [60]) / "config.yaml").write_text("")
    warnings = []
    runs = find_runs(fake_sweep, warnings)
    assert len(warnings) == 6 and sum("torn" in w for w in warnings) == 1
    assert sum("metrics.jsonl line 2 is not a metrics row" in w for w in warnings) == 4
    assert any("plain-32_s0/config.yaml is not a resexp config" in w for w in warnings)
    assert {r.depth for r in runs} == {20, 56, 110}
    [torn_run] = [r for r in runs if r.depth == 110]
    assert torn_run.step == 100 and not torn_run.complete  # status.json says complete, the rows stop at 100
    text = resexp("report", str(fake_sweep), cwd=fake_sweep)
    assert (
        text.code == 0
        and "| plain-110 | plain | 110 | - | 0 | 0/1 complete, seed 1 missing |" in text.stdout
        and "plain-110_s0: incomplete (100/200" in text.stdout
    )
    assert len([line for line in text.stderr.splitlines() if line.startswith("warning")]) == 6
    assert resexp("plot", str(fake_sweep), cwd=fake_sweep).code == 0


def test_a_run_is_complete_only_when_its_rows_reach_its_iterations(tmp_path):
    fake_run(tmp_path, "plain", 20, 0, [60, 50], [60, 50], iterations=300)  # status.json says complete
    [run] = find_runs(tmp_path)
    assert not run.complete and run.state == "incomplete (200/300 iterations)"


# --------------------------------------------------------------------------- what report never merges


def test_runs_of_other_settings_are_other_rows_never_averaged(fake_sweep):
    """Runs of another schedule length or learning rate are other experiments, with what differs
    in a settings column; their verdicts are apart."""
    for seed in (0, 1):
        long = fake_run(fake_sweep / "long", "plain", 20, seed, [50, 40, 30], [50, 40, 30])
        config = yaml.safe_load((long / "config.yaml").read_text())
        config["optim"] = {"lr": 0.05}
        (long / "config.yaml").write_text(yaml.safe_dump(config))
    rows = summarise(find_runs(fake_sweep))
    plain20 = sorted((r["settings"], r["final_train_error"][0]) for r in rows if r["net"] == "plain-20")
    assert plain20 == [("lr=0.05 iterations=300", 30.0), ("lr=0.1 iterations=200", 30.5)]
    lines = verdicts(rows)
    assert any(line.startswith("cifar10/cifar (lr=0.1 iterations=200): degradation reproduced") for line in lines)
    assert "cifar10/cifar (lr=0.05 iterations=300): no verdict: needs plain nets of two depths (found [20])" in lines
    text = resexp("report", str(fake_sweep), cwd=fake_sweep).stdout
    assert "| settings |" in text and "| plain-20 | lr=0.05 iterations=300 |" in text


def test_a_copy_of_a_run_counts_once_and_a_seed_that_never_started_is_named(fake_sweep):
    import shutil

    shutil.copytree(fake_sweep / "cifar10/plain-56_s1", fake_sweep / "copy/cifar10/plain-56_s1")
    (fake_sweep / "cifar10/residual-56A_s1/metrics.jsonl").unlink()
    (fake_sweep / "cifar10/residual-56A_s1/status.json").unlink()  # seed 1 of ResNet-56 never started
    warnings = []
    rows = {r["net"]: r for r in summarise(find_runs(fake_sweep), warnings.append)}
    assert rows["plain-56"]["n"] == 2 and rows["plain-56"]["seeds"] == [0, 1]  # not three
    assert len(warnings) == 1 and "holds the same run as" in warnings[0] and "counted once" in warnings[0]
    assert rows["ResNet-56"]["seeds"] == [0] and rows["ResNet-56"]["missing"] == [1]
    text = resexp("report", str(fake_sweep), cwd=fake_sweep)
    assert "| 0 | 1/1 complete, seed 1 missing |" in text.stdout and "seeds missing from some nets: 1" in text.stdout
    assert "counted once" in text.stderr


def test_one_seed_per_net_cannot_decide(tmp_path):
    fake_run(tmp_path, "plain", 20, 0, [30], [35])
    fake_run(tmp_path, "plain", 56, 0, [60], [63])
    [line] = verdicts(summarise(find_runs(tmp_path)))
    assert line.startswith("cifar10/cifar: degradation: cannot decide (one seed of a net")
    assert "plain-56 training error above plain-20 by 30.00 points (noise unknown: one seed)" in line


def test_a_config_yaml_that_does_not_describe_its_run_is_left_out(fake_sweep):
    """Edited by hand after training (ResNet-56 made ResNet-14): the folder's name and the status
    the run wrote say otherwise, so the run is named and skipped, not reported as another net."""
    path = fake_sweep / "cifar10/residual-56A_s0/config.yaml"
    config = yaml.safe_load(path.read_text())
    config["model"]["depth"] = 14
    path.write_text(yaml.safe_dump(config))
    warnings = []
    runs = find_runs(fake_sweep, warnings)
    assert [r.depth for r in runs if r.mode == "residual"] == [20, 20, 56]
    assert warnings == [
        f"warning: skipping a malformed run: {path} does not describe the run its folder names "
        "(depth: the folder says 56, config.yaml 14)"
    ]


def test_json_has_no_nan(fake_sweep):
    fake_run(fake_sweep, "plain", 110, 0, [90], [90], status="running", iterations=1000)  # one seed: std unknown
    out = resexp("report", str(fake_sweep), "--format", "json", cwd=fake_sweep)
    assert "NaN" not in out.stdout
    doc = json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    row = next(r for r in doc["rows"] if r["depth"] == 110)
    assert row["final_train_error"] == [90, None]


def test_a_folder_resexp_did_not_write_is_named_as_such_never_told_to_be_deleted(fake_sweep):
    """Before: "skipping a malformed run: ... delete the folder to start again", of someone else's folder."""
    foreign = fake_sweep / "notes"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("lr: 0.1\n")
    (foreign / "status.json").write_text("{}")
    result = resexp("report", ".", cwd=fake_sweep)
    assert result.code == 0 and "skipping notes, not a run of resexp's" in result.stderr, result.stderr
    assert "delete" not in result.stderr
