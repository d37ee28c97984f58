"""`resexp analyze` and the HTML report: the facts each analysis rests on (which layers, what a
removed block computes, filter-normalised directions, gradients against autograd), resuming a
killed landscape, unfinished and diverged runs, and the files and lines the CLI writes."""

import json
import re
import shutil
import signal
import subprocess

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, TINY_DIR, folder, resexp, rows, signal_at
from resexp.analysis import landscape
from resexp.analysis.gradients import conv_layers, gradient_norms
from resexp.analysis.lesion import blocks_of, removable, without
from resexp.analysis.protocol import Options
from resexp.analysis.responses import response_layers, response_stds
from resexp.analysis.subjects import subjects
from resexp.analysis.verdict import OUTCOMES
from resexp.errors import NotRemovable
from resexp.nets.build import build_net


def test_response_hooks_capture_exactly_the_3x3_layers_and_are_removed():
    for depth, mode, expected in ((20, "residual", 19), (20, "plain", 19), (56, "residual", 55)):
        net = build_net("cifar", depth, mode, "B", 10)
        layers = response_layers(net)
        assert len(layers) == expected and all(isinstance(m, torch.nn.BatchNorm2d) for m in layers)
    assert len(response_layers(build_net("imagenet", 18, "residual", "B", 10))) == 16  # the 7x7 stem is not 3x3
    net = build_net("cifar", 20, "residual", "A", 10)
    stds = response_stds(net, [(torch.randn(8, 3, 32, 32), None)])
    assert len(stds) == 19 and all(s > 0 for s in stds)
    assert all(not m._forward_hooks for m in net.modules())


def test_the_std_is_over_every_value_of_the_response():
    net = build_net("cifar", 8, "plain", "A", 10).eval()
    x = torch.randn(16, 3, 32, 32)
    first_bn = response_layers(net)[0]
    expected = first_bn(net.stem[0](x)).std(unbiased=False).item()
    assert response_stds(net, [(x[:10], None), (x[10:], None)])[0] == pytest.approx(expected, rel=1e-5)


def test_removing_residual_blocks_gives_the_net_built_without_them():
    torch.manual_seed(0)
    deep, shallow = (
        build_net("cifar", 14, "residual", "A", 10).eval(),
        build_net("cifar", 8, "residual", "A", 10).eval(),
    )
    state = {k: v for k, v in deep.state_dict().items() if not re.match(r"stages\.\d\.1\.", k)}
    shallow.load_state_dict(state)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), without(deep, {1, 3, 5}):  # the second block of each stage
        torch.testing.assert_close(deep(x), shallow(x))
    assert [type(b).__name__ for _, _, b in blocks_of(deep)] == ["Block"] * 6  # put back


def test_a_removed_downsampling_block_leaves_its_zero_padded_shortcut():
    net = build_net("cifar", 14, "residual", "A", 10).eval()
    stage, i, block = blocks_of(net)[2]  # the first block of stage 2: 16 -> 32 channels, stride 2
    x = torch.relu(torch.randn(2, 16, 32, 32))
    with without(net, {2}):
        out = stage[i](x)
    assert out.shape == (2, 32, 16, 16) and torch.equal(out[:, :16], x[:, :, ::2, ::2]) and not out[:, 16:].any()


def test_a_plain_block_that_changes_shape_is_refused():
    net = build_net("cifar", 14, "plain", "A", 10)
    assert [removable(b) for _, _, b in blocks_of(net)] == [True, True, False, True, False, True]
    with pytest.raises(NotRemovable, match="changes the shape"), without(net, {2}):
        pass
    assert all(type(b).__name__ == "Block" for _, _, b in blocks_of(net))


def test_each_filter_of_a_normalised_direction_has_its_weight_filters_norm():
    net = build_net("cifar", 8, "residual", "B", 10)
    direction = landscape.filter_normalised(net, torch.Generator().manual_seed(0))
    for name, p in net.named_parameters():
        d = direction[name]
        if p.dim() == 1:  # BN weights and biases, the head's bias
            assert not d.any(), name
        else:
            torch.testing.assert_close(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
            assert not torch.allclose(d, p.detach())


def test_the_landscape_at_the_origin_is_the_unperturbed_loss():
    torch.manual_seed(0)
    net = build_net("cifar", 8, "residual", "A", 10).eval()
    x, y = torch.randn(20, 3, 32, 32), torch.randint(0, 10, (20,))
    g = torch.Generator().manual_seed(1)
    surface = landscape.Surface(net, [landscape.filter_normalised(net, g) for _ in range(2)], x, y, batch_size=7)
    with torch.no_grad():
        expected = F.cross_entropy(net(x), y).item()
    loss, _ = surface.at(0.0, 0.0)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert surface.at(0.5, -0.3)[0] != pytest.approx(expected, rel=1e-3)
    assert surface.at(0.0, 0.0)[0] == pytest.approx(expected, rel=1e-5)  # the weights are put back


def test_the_gradient_norms_equal_a_direct_autograd_computation():
    torch.manual_seed(0)
    net = build_net("cifar", 14, "plain", "A", 10)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    norms = gradient_norms(net, x, y, lr=0.1)
    reference = build_net("cifar", 14, "plain", "A", 10)
    reference.load_state_dict(before)
    loss = F.cross_entropy(reference.train()(x), y)
    convs = conv_layers(reference)
    grads = torch.autograd.grad(loss, [c.weight for c in convs])
    assert norms["weight_norm"] == pytest.approx([g.norm().item() for g in grads], rel=1e-5)
    sizes = [0.1 * g.norm().item() / c.weight.norm().item() for g, c in zip(grads, convs, strict=True)]
    assert norms["update"] == pytest.approx(sizes, rel=1e-5)  # lr * |g| / |w|, per layer
    assert len(norms["input_norm"]) == 6 and norms["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN statistics untouched


def test_analyze_writes_its_files_prints_a_verdict_and_marks_what_it_analysed(tiny_sweep):
    for kind in ("responses", "gradients", "lesion", "paths"):
        result = resexp("analyze", kind, "runs/default", cwd=tiny_sweep)
        assert result.code == 0, result.stderr
        assert "plain-8" in result.stdout and "ResNet-8" in result.stdout
        assert any(f": {outcome.upper()}: " in result.stdout for outcome in OUTCOMES), result.stdout
        doc = json.loads((tiny_sweep / f"runs/default/analysis/{kind}.json").read_text())
        assert {r["net"] for r in doc["records"]} == {"plain-8", "ResNet-8"}
        trained = [r for r in doc["records"] if r.get("at", "checkpoint") == "checkpoint"]
        assert all(r["state"] == "complete (16)" for r in trained) and doc["verdicts"]
        assert all(r["training"]["kind"] == "trained" and "not converged" in r["training"]["text"] for r in trained)
        assert all(v["outcome"] in OUTCOMES and v["why"] and v["source"] and v["judged_on"] for v in doc["verdicts"])
        assert (tiny_sweep / f"runs/default/analysis/{kind}.png").stat().st_size > 10_000
    gradients = json.loads((tiny_sweep / "runs/default/analysis/gradients.json").read_text())["records"]
    assert sorted(r["at"] for r in gradients) == ["checkpoint", "checkpoint", "init", "init"]
    at_init = resexp("analyze", "responses", "runs/default", "--at-init", cwd=tiny_sweep)
    assert at_init.code == 0 and (tiny_sweep / "runs/default/analysis/responses-init.json").exists()
    assert json.loads((tiny_sweep / "runs/default/analysis/responses-init.json").read_text())["records"][0][
        "state"
    ] == ("initialised")


def test_a_killed_landscape_resumes_without_recomputing_finished_chunks(tiny_sweep, monkeypatch, tmp_path):
    shutil.copytree(tiny_sweep / "runs", tmp_path / "runs")
    run_dir = tmp_path / folder(*TINY)
    [net] = subjects(run_dir, False, torch.device("cpu"), None, print)
    options = Options(grid=3, images=32)
    real, computed = landscape.compute_chunk, []

    def killed_after_two(job, subject=None):
        if len(computed) == 2:
            raise KeyboardInterrupt
        computed.append(job["name"])
        return real(job, subject)

    monkeypatch.setattr(landscape, "compute_chunk", killed_after_two)
    chunks = tmp_path / "chunks"
    with pytest.raises(KeyboardInterrupt):
        landscape.landscape(net, options, chunks, print)
    assert sorted(p.name for p in chunks.glob("*.json")) == ["line.json", "meta.json", "row-000.json"]
    first, computed[:] = list(computed), []
    monkeypatch.setattr(
        landscape, "compute_chunk", lambda job, subject=None: computed.append(job["name"]) or real(job, subject)
    )
    values = landscape.landscape(net, options, chunks, print)
    assert computed == ["row-001", "row-002"] and first == ["line", "row-000"]
    assert len(values["line"]) == 5 and len(values["grid"]) == 3
    centre = values["grid"][1][1]
    assert centre[:2] == [0.0, 0.0] and centre[2] == pytest.approx(values["line"][2][2])


def test_the_landscape_cli_on_two_processes_for_the_chosen_nets(tiny_sweep):
    args = ["--grid", "3", "--images", "32", "--workers", "2", "--nets", "ResNet-8", "--seeds", "0"]
    result = resexp("analyze", "landscape", "runs/default", *args, cwd=tiny_sweep)
    assert result.code == 0, result.stderr
    written = tiny_sweep / "runs/default/analysis/landscape+grid-3+images-32+nets-ResNet-8+seeds-0.json"
    assert (
        str(written.relative_to(tiny_sweep)) in result.stdout.splitlines()
    )  # named by the options that are not defaults
    doc = json.loads(written.read_text())
    assert [r["net"] for r in doc["records"]] == ["ResNet-8"] and len(doc["records"][0]["grid"]) == 3
    assert "landscape:" in result.stdout and "non-convex share" in result.stdout


def test_unfinished_and_diverged_runs_are_said_so(tmp_path, monkeypatch):
    diverged = ["name=x", "optim.lr=1e6", "model.mode=plain"]
    resexp("train", *TINY, *diverged, cwd=tmp_path)  # diverges at its first evaluation
    (tmp_path / folder(*TINY, *diverged) / "status.json").write_text('{"status": "running", "step": 8}')
    unfinished = ["name=x", "model.mode=plain", "schedule.iterations=32"]
    signal_at(monkeypatch, 20, signal.SIGINT)
    assert resexp("train", *TINY, *unfinished, cwd=tmp_path).code == 130  # a checkpoint at 20 of 32
    monkeypatch.undo()
    result = resexp("analyze", "responses", "runs/x", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert f"skipping {folder(*TINY, *diverged)}: diverged at iteration 8" in result.stderr
    [record] = json.loads((tmp_path / "runs/x/analysis/responses.json").read_text())["records"]
    assert record["net"] == "plain-8" and record["state"] == "unfinished (20 of 32)"
    assert record["checkpoint"]["file"] == "last.pt" and record["checkpoint"]["step"] == 20
    # The diverged run is left out, and the verdicts about its net say so (never judged as if it were not there)
    assert resexp("analyze", "signal", "runs/x", cwd=tmp_path).code == 0
    verdicts = json.loads((tmp_path / "runs/x/analysis/signal.json").read_text())["verdicts"]
    about = [v for v in verdicts if "plain-8" in v["claim"]]
    assert about and all(
        "left out, diverged in training: plain-8 s0 (diverged at iteration 8)" in v["why"] for v in about
    )


def test_analyze_mistakes_are_one_line(tiny_sweep, tmp_path):
    for args, message in (
        (["ensembles", "runs/default"], "'ensembles' is not an analysis: choose one of responses"),
        (["lesion", "nowhere"], "nowhere is not a folder"),
        (["lesion", "runs/default", "--draws", "0"], "--draws 0 must be at least 1"),
        (["lesion", "empty"], "no run under empty can be analysed"),
        (
            ["lesion", "runs/default", "--nets", "ResNet-99"],
            "--nets ResNet-99 can be analysed: the runs there are of plain-8, ResNet-8, seeds 0",
        ),
        (["lesion", "runs/default", "--seeds", "x"], "--seeds x must be a comma list of integers"),
        (["landscape", "runs/default", "--grid", "100000"], "--grid 100000 must be at most 101"),
        (["landscape", "runs/default", "--workers", "999"], "--workers 999 must be at most"),
        (["landscape", "runs/default", "--span", "inf"], "--span inf must be a positive number"),
        (["lesion", "runs/default", "--draws", "1000000"], "--draws 1000000 must be at most 100"),
        (["lesion", "runs/default", "--grid", "x"], "Invalid value for '--grid'"),
        (["lesion", "runs/default", "--device", "mps"], "--device mps asked for, but this machine has no Apple GPU"),
        (
            ["lesion", "runs/default", "--device", "tpu"],
            "--device tpu is not a device: use auto, cpu, cuda, cuda:N or mps",
        ),
    ):
        (tiny_sweep / "empty").mkdir(exist_ok=True)
        result = resexp("analyze", *args, cwd=tiny_sweep)
        assert result.code == 1 and message in result.lines[-1], result.stderr
        assert [line for line in result.lines if line.startswith("error")] == [result.lines[-1]]


def test_grad_norms_are_logged_per_stage_only_when_asked(tmp_path):
    assert resexp("train", *TINY, "log.grad_norms=true", cwd=tmp_path).code == 0
    row = rows(tmp_path / TINY_DIR)[0]  # log.grad_norms is a setting: the same folder
    assert {k for k in row if k.startswith("grad_norm/")} == {
        f"grad_norm/{p}" for p in ("stem", "stage1", "stage2", "stage3", "head")
    }
    assert all(row[k] > 0 for k in row if k.startswith("grad_norm/"))
    assert resexp("train", *TINY, "name=off", cwd=tmp_path).code == 0
    row = rows(tmp_path / folder(*TINY, "name=off"))[0]
    assert not [k for k in row if k.startswith("grad_norm")]


def test_the_html_report_is_one_self_contained_file(tiny_sweep):
    assert resexp("analyze", "responses", "runs/default", cwd=tiny_sweep).code == 0
    # The same analysis with another option: its own file, beside the first, and its own section.
    assert resexp("analyze", "responses", "runs/default", "--per-channel", "--seeds", "0", cwd=tiny_sweep).code == 0
    assert (tiny_sweep / "runs/default/analysis/responses+per_channel-true+seeds-0.json").exists()
    result = resexp("report", "runs/default", "--format", "html", cwd=tiny_sweep)
    assert result.code == 0 and result.stdout.strip() == "runs/default/report.html"
    page = (tiny_sweep / "runs/default/report.html").read_text()
    assert "<h2>responses</h2>" in page and "<h2>table and verdict</h2>" in page and "He et al. 2015, Fig. 7" in page
    assert "<h2>responses (per_channel true, seeds 0)</h2>" in page
    labels = re.findall(r"<span class='outcome ([a-z-]+)'>([a-z ]+)</span>", page)  # each verdict: which and why
    assert labels and all(word in OUTCOMES and cls == word.replace(" ", "-") for cls, word in labels)
    assert page.count("Judged on: ") == page.count("<span class='outcome ")  # every verdict says on what
    whys = re.findall(r"</b> \([^)]*\)\. (.)", page)  # the numbers follow the claim as a sentence of their own
    assert whys and all(not c.islower() for c in whys)
    # A verdict that could not have been otherwise: a grey label saying so, and why (BN sets the scale)
    assert resexp("analyze", "signal", "runs/default", cwd=tiny_sweep).code == 0
    assert resexp("report", "runs/default", "--format", "html", cwd=tiny_sweep).code == 0
    page = (tiny_sweep / "runs/default/report.html").read_text()
    grey = re.findall(r"<li class=construction><span class='outcome by-construction'>([a-z ,]+)</span>", page)
    assert grey == ["agrees, by construction"] and "Could not have been otherwise: with BN after every conv" in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing fetched
    assert "http://" not in page and "https://" not in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_the_html_report_renders_in_a_real_browser(tiny_sweep, tmp_path):
    """What a reader sees: Chromium draws the page with its figures (a blank or broken page would
    be one colour)."""
    from PIL import Image

    assert resexp("report", "runs/default", "--format", "html", cwd=tiny_sweep).code == 0
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            (tiny_sweep / "runs/default/report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2400)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 500  # text, tables and plotted curves, not a blank page


def test_data_moved_since_training_is_one_line_that_names_data_root(tmp_path):
    from conftest import write_npz

    (tmp_path / "a").mkdir()
    write_npz(tmp_path / "c.npz")
    small = ["data.batch_size=16", "model.depth=8", "schedule.iterations=4", "eval_every=2", "device=cpu"]
    assert resexp("train", "data.root=../c.npz", *small, cwd=tmp_path / "a").code == 0
    moved = resexp("analyze", "responses", "a/runs/default", cwd=tmp_path)  # ../c.npz is relative to a/
    assert moved.code == 1 and len(moved.lines) == 1 and "--data-root says where the data is" in moved.stderr
    assert not (tmp_path / "a/runs/default/analysis").exists()
    assert resexp("analyze", "responses", "a/runs/default", "--data-root", "c.npz", cwd=tmp_path).code == 0


def test_an_interrupted_analysis_leaves_nothing(tiny_sweep, monkeypatch, tmp_path):
    from resexp.analysis import lesion

    shutil.copytree(tiny_sweep / "runs", tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs/default/analysis", ignore_errors=True)  # what other tests analysed

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lesion, "lesion", interrupted)
    result = resexp("analyze", "lesion", "runs/default", cwd=tmp_path)
    assert result.code == 130 and result.lines[-1] == "interrupted: nothing of this analysis was written"
    assert not (tmp_path / "runs/default/analysis").exists()


# --------------------------------------------------------------------------- keyed by the checkpoint read


def test_an_unreadable_last_checkpoint_is_said_and_the_state_is_the_one_read(tiny_sweep, tmp_path):
    """Only last.pt truncated: the analysis says it reads prev.pt, and the net is what prev.pt
    holds (before: prev.pt silently, called complete)."""
    shutil.copytree(tiny_sweep / "runs", tmp_path / "runs")
    run_dir = tmp_path / TINY_DIR
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = resexp("analyze", "responses", str(run_dir), cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "is not a readable checkpoint" in result.stderr and f"analysing the previous checkpoint {run_dir}" in (
        result.stderr
    )
    [record] = json.loads((run_dir / "analysis/responses.json").read_text())["records"]
    assert record["state"] == "unfinished (8 of 16)" and record["checkpoint"]["file"] == "prev.pt"
    assert record["checkpoint"]["step"] == 8 and len(record["checkpoint"]["sha256"]) == 64


def test_landscape_chunks_of_other_weights_are_never_reused(tiny_sweep, tmp_path):
    """The run folder deleted and trained again (other weights, same settings): the chunks of the
    old net are computed anew, and the record says which checkpoint it measured."""
    shutil.copytree(tiny_sweep / "runs", tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs/default/analysis", ignore_errors=True)
    args = ["landscape", "runs/default", "--nets", "ResNet-8", "--grid", "3", "--images", "100000"]
    assert resexp("analyze", *args, cwd=tmp_path).code == 0
    written = tmp_path / "runs/default/analysis/landscape+grid-3+images-100000+nets-ResNet-8.json"
    first = json.loads(written.read_text())["records"][0]
    assert first["images"] == 256  # all the training images there are, not the 100000 asked for
    shutil.rmtree(tmp_path / TINY_DIR)
    assert resexp("train", *TINY, "optim.momentum=0.8", f"hydra.run.dir={TINY_DIR}", cwd=tmp_path).code == 0
    again = resexp("analyze", *args, cwd=tmp_path)
    assert again.code == 0 and "are of other weights or settings; starting again" in again.stderr
    second = json.loads(written.read_text())["records"][0]
    assert second["checkpoint"]["sha256"] != first["checkpoint"]["sha256"] and second["grid"] != first["grid"]


def test_a_landscape_worker_reads_the_pinned_weights_not_the_runs_latest(tiny_sweep, tmp_path):
    """A run still training writes new checkpoints while its landscape is computed: every chunk,
    in whichever process, sees the weights the computation began with."""
    shutil.copytree(tiny_sweep / "runs", tmp_path / "runs")
    [net] = subjects(tmp_path / TINY_DIR, False, torch.device("cpu"), None, print)
    options = Options(grid=3, images=32)
    chunks = tmp_path / "chunks"
    landscape.landscape(net, options, chunks, print)
    pinned = json.loads((chunks / "row-001.json").read_text())
    prev = tmp_path / TINY_DIR / "prev.pt"
    (tmp_path / TINY_DIR / "last.pt").write_bytes(prev.read_bytes())  # "the run moved on"
    job = {"run": net.run, "device": "cpu", "data_root": net.cfg.data.root, "folder": str(chunks), "images": 32}
    landscape.compute_chunk({**job, "name": "row-001", "points": [tuple(p[:2]) for p in pinned]})
    assert json.loads((chunks / "row-001.json").read_text()) == pinned


def test_each_run_is_analysed_on_its_own_first_batch(tmp_path):
    """gradients reads the first training batch as the run's training saw it, in its seed's order
    (before: seed 0's batch for every run), from data loaded once for the runs of a tiny_sweep."""
    from resexp.data import build_data
    from resexp.launch.jobs import compose
    from resexp.rundir.trained import own_data

    cfg = [compose([*TINY, f"seed={seed}"]) for seed in (0, 1)]
    first = [next(iter(own_data(c, torch.device("cpu")).train.batches(0))) for c in cfg]
    trained = next(iter(build_data(cfg[1].data, 1, torch.device("cpu")).train.batches(0)))
    assert torch.equal(first[1][0], trained[0]) and torch.equal(first[1][1], trained[1])
    assert not torch.equal(first[0][0], first[1][0])
    assert own_data(cfg[0], torch.device("cpu")).evals["test"] is own_data(cfg[1], torch.device("cpu")).evals["test"]


def test_one_run_that_cannot_be_analysed_is_named_and_the_others_go_on(tiny_sweep, tmp_path):
    """Before: one unreadable run aborted the whole analysis."""
    shutil.copytree(tiny_sweep / "runs", tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs/default/analysis", ignore_errors=True)
    broken = tmp_path / folder(*TINY, "model.mode=plain")
    (broken / "data.json").write_text('{"fingerprint": "someone else\'s data", "source": "x"}')
    result = resexp("analyze", "responses", "runs/default", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert f"skipping {broken.relative_to(tmp_path)}: " in result.stderr and "it was trained on x" in result.stderr
    [record] = json.loads((tmp_path / "runs/default/analysis/responses.json").read_text())["records"]
    assert record["net"] == "ResNet-8"
