"""Weights out of resexp: `resexp export` (resexp's state_dict with the fields that build the net,
or torchvision's names) and `hubconf.py` (torch.hub), against torchvision's own nets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import TINY, folder, leftovers, resexp, rows
from resexp.commands.import_ import import_run
from resexp.nets.build import build_net
from resexp.rundir import weights

REPO = Path(__file__).resolve().parents[1]
TV18 = {"model.family": "imagenet", "model.depth": 18, "model.mode": "residual", "model.shortcut": "B"}


def hub(**kwargs):
    return torch.hub.load(str(REPO), "resexp_net", source="local", trust_repo=True, **kwargs)


def test_an_exported_run_loads_through_torch_hub_as_the_net_it_trained(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    result = resexp("export", str(run_dir), str(tmp_path / "net.pt"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "ResNet-8 s0 at iteration 16 (state_dict)" in result.stdout
    saved = torch.load(run_dir / "last.pt", weights_only=True)
    reference = build_net("cifar", 8, "residual", "A", 10)
    reference.load_state_dict(saved["model"])
    x = torch.randn(4, 3, 32, 32)
    for source in (tmp_path / "net.pt", run_dir / "last.pt"):  # an export, or the checkpoint itself
        net = hub(weights=str(source))
        assert not net.training and torch.equal(net(x), reference.eval()(x))
    import numpy as np

    old = torch.load(run_dir / "last.pt", weights_only=True)
    old["rng"]["numpy"] = np.random.get_state()  # as resexp 0.1 stored it: an array, not a tensor
    torch.save(old, tmp_path / "old.pt")
    assert torch.equal(hub(weights=str(tmp_path / "old.pt"))(x), reference(x))
    exported = torch.load(tmp_path / "net.pt", weights_only=True)
    assert exported["fields"]["model.depth"] == 8 and exported["num_classes"] == 10
    assert exported["source"]["step"] == 16 and len(exported["source"]["sha256"]) == 64
    with pytest.raises(ValueError, match="model.depth=8, not 20"):
        hub(weights=str(tmp_path / "net.pt"), depth=20)


def test_without_weights_the_hub_builds_build_nets_net():
    torch.manual_seed(0)
    net = hub(depth=56, mode="plain")
    torch.manual_seed(0)
    reference = build_net("cifar", 56, "plain", "A", 10)
    assert net.state_dict().keys() == reference.state_dict().keys()
    pairs = zip(net.state_dict().values(), reference.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"init": "fixup"}, "trains without normalisation"),
        ({"depth": 21}, "not a CIFAR depth"),
        ({"norm": "group"}, "model.norm=group is not valid: expected one of batch, none"),  # before: built, no BN
        ({"depth": "deep"}, "model.depth=deep is not valid: expected an integer"),
        ({"num_classes": 0}, "num_classes=0 must be an integer of at least 2"),
        ({"init": "zero_gamma", "block": "pre"}, "builds branches that never train"),
    ],
)
def test_the_hub_refuses_what_train_refuses(kwargs, message):
    from resexp.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        hub(**kwargs)


def test_the_hub_converts_its_arguments_as_train_does():
    torch.manual_seed(0)
    text = hub(depth="20", mode="plain")  # train takes model.depth='20' as 20
    torch.manual_seed(0)
    number = hub(depth=20, mode="plain")
    assert all(torch.equal(a, b) for a, b in zip(text.state_dict().values(), number.state_dict().values(), strict=True))


DESIGNS = [
    ["model.norm=none", "model.init=fixup"],
    ["model.norm=none", "model.init=skipinit", "model.block=pre"],
    ["model.block=pre", "model.shortcut=B"],
    ["model.block=pre", "model.body=bottleneck", "model.depth=11", "model.shortcut=C"],
    ["model.init=zero_gamma", "model.body=bottleneck", "model.depth=11"],
    ["model.norm=none", "model.init=xavier", "model.mode=plain"],
]


@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: "+".join(o.split("=")[1] for o in d))
def test_every_design_train_accepts_leaves_resexp_through_export_and_the_hub(tmp_path, design):
    """Before: export and the hub of any Fixup or pre-activation run ended in KeyError: 'head.2.weight'."""
    args = [*TINY, *design, "schedule.iterations=2", "eval_every=2"]
    assert resexp("train", *args, cwd=tmp_path).code == 0
    run_dir = tmp_path / folder(*args)
    result = resexp("export", str(run_dir), str(tmp_path / "net.pt"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    trained = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    x = torch.randn(2, 3, 32, 32)
    for source in (tmp_path / "net.pt", run_dir / "last.pt"):
        net = hub(weights=str(source))
        assert net.state_dict().keys() == trained.keys()
        assert all(torch.equal(net.state_dict()[k], v) for k, v in trained.items()) and net(x).shape == (2, 10)


@pytest.mark.parametrize("depth,reference", [(18, torchvision.models.resnet18), (34, torchvision.models.resnet34)])
def test_torchvision_names_load_into_torchvisions_net_and_compute_the_same(depth, reference):
    torch.manual_seed(0)
    ours = build_net("imagenet", depth, "residual", "B", 1000).eval()
    for m in ours.modules():  # non-trivial BN statistics, so that a swapped name would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    theirs = reference().eval()
    theirs.load_state_dict(weights.torchvision_names(ours.state_dict()))  # strict: every name, every shape
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


@pytest.mark.parametrize(
    "fields,why",
    [
        ({"model.family": "cifar", "model.depth": 20, "model.mode": "residual"}, "residual ImageNet nets only"),
        ({"model.family": "imagenet", "model.depth": 18, "model.mode": "plain"}, "residual ImageNet nets only"),
        ({"model.family": "imagenet", "model.depth": 50, "model.mode": "residual"}, "v1.5"),
        ({"model.family": "imagenet", "model.depth": 18, "model.mode": "residual"}, "model.shortcut=B"),  # paper: A
        ({"model.family": "imagenet", "model.depth": 34, "model.mode": "residual", "model.shortcut": "B"}, None),
        ({"model.family": "imagenet", "model.depth": 18, "model.mode": "residual", "model.shortcut": "B"}, None),
        ({**TV18, "model.block": "pre"}, "model.block=post"),
        ({**TV18, "model.norm": "none"}, "model.norm=batch"),
    ],
)
def test_only_torchvisions_own_nets_get_torchvisions_names(fields, why):
    reason = weights.why_not_torchvision(fields)
    assert (reason is None) if why is None else (why in reason)


def test_every_bad_export_is_one_line_and_writes_nothing(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "out.pt"
    untrained = tmp_path / "copy"
    shutil.copytree(run_dir, untrained)
    for name in ("last.pt", "prev.pt"):
        (untrained / name).unlink(missing_ok=True)
    cases = [
        ((str(run_dir), str(out), "--to", "onnx"), "--to onnx is not a format"),
        ((str(run_dir), str(out), "--to", "torchvision"), "torchvision has residual ImageNet nets only"),
        ((str(tmp_path / "nowhere"), str(out)), "is not a run folder"),
        ((str(tmp_path), str(out)), "has no config.yaml"),
        ((str(untrained), str(out)), "has no checkpoint to export"),
        ((str(run_dir), str(tmp_path)), "is a folder: name the file to write"),
        ((str(run_dir), str(tmp_path / "missing" / "out.pt")), "missing does not exist"),
    ]
    # Before: exit 0, the run's checkpoint replaced by a weights-only file, its config by a torch archive.
    owned = {name: (untrained / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}
    for target in ("last.pt", "config.yaml", "metrics.jsonl", "new.pt", "eval/x.pt"):
        cases.append(((str(run_dir), str(untrained / target)), "lies in the run folder"))
    for args, message in cases:
        result = resexp("export", *args, cwd=tmp_path)
        assert result.code == 1 and len(result.lines) == 1 and message in result.lines[0], (args, result.stderr)
        assert not out.exists()
    assert {name: (untrained / name).read_bytes() for name in owned} == owned
    assert not (untrained / "last.pt").exists() and not (untrained / "new.pt").exists()
    figure = resexp("plot", str(run_dir), "--out", str(untrained / "curves"), cwd=tmp_path)
    assert figure.code == 1 and "lies in the run folder" in figure.lines[0] and not (untrained / "curves.png").exists()


def test_a_truncated_or_foreign_weights_file_is_one_clear_error(tmp_path):
    from resexp.errors import UserError

    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a weights file torch can read"):
        weights.load(tmp_path / "cut.pt")
    with pytest.raises(UserError, match="neither a resexp export"):
        weights.load(tmp_path / "foreign.pt")


# --------------------------------------------------------------------------- weights in: resexp import

AKAMASTER = REPO.parent / "shared" / "weights" / "akamaster"
AKAMASTER_FILES = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}


class AkamasterBlock(torch.nn.Module):
    """akamaster/pytorch_resnet_cifar10's BasicBlock, written from its description: option A pads
    the subsampled identity with planes/4 zero channels before and after."""

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or cin != planes) else None

    def forward(self, x):
        F = torch.nn.functional
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class AkamasterNet(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(AkamasterBlock(cin, planes, stride if i == 0 else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        F = torch.nn.functional
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def akamaster_file(net: AkamasterNet, path: Path) -> Path:
    """Saved as akamaster's files are: DataParallel's names, without num_batches_tracked (old torch)."""
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "best_prec1": 90.0}, path)
    return path


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so that any channel put in the wrong place shows."""
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return net


def import_into(cwd: Path, source: str, file: Path, name: str | None = None) -> Path:
    """`resexp import SOURCE FILE [--name NAME]` in-process in `cwd`: the run folder it made."""
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        return cwd / import_run(source, file, name, None).path
    finally:
        os.chdir(previous)


def imported_net(run_dir: Path) -> torch.nn.Module:
    trained = weights.of_run(run_dir, print)
    fields, classes, _, _ = weights.read_export(trained.file)
    net = weights.build(fields, classes)
    net.load_state_dict(trained.model)
    return net


def same_outputs(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """The same outputs in eval mode, and in train mode (batch statistics; the running ones move alike)."""
    x = torch.randn(8, 3, 32, 32)
    for train in (False, True):
        ours.train(train), theirs.train(train)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    ours_bn = [m.running_mean for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert ours_bn and all(torch.isfinite(v).all() for v in ours_bn)


def test_an_imported_akamaster_layout_net_computes_what_akamasters_own_net_computes(tmp_path):
    torch.manual_seed(0)
    theirs = randomised(AkamasterNet(n=3)).eval()
    run_dir = import_into(tmp_path, "akamaster", akamaster_file(theirs, tmp_path / "resnet20.th"), None)
    assert run_dir.name == "residual-20A_s0+normalize-imagenet+iterations-78200"
    ours = imported_net(run_dir)
    same_outputs(ours, theirs)
    saved = torch.load(run_dir / "weights.pt", weights_only=True)
    # the identity lands in the middle channels of akamaster's stage 2: resexp's first 16 are its 8..23
    torch.testing.assert_close(ours.stages[1][0].body[3].weight[:16], theirs.layer2[0].conv2.weight[8:24])
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["source"] == "akamaster" and provenance["sha256"] == saved["source"]["sha256"]
    assert len(provenance["sha256"]) == 64 and "status" not in provenance
    assert json.loads((run_dir / "status.json").read_text())["status"] == "imported"
    assert "normalize: imagenet" in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("depth", sorted(AKAMASTER_FILES))
def test_the_published_akamaster_nets_import_as_the_functions_they_are(tmp_path, depth):
    path = AKAMASTER / AKAMASTER_FILES[depth]
    if not path.exists():
        pytest.skip(f"akamaster's published nets are not at {AKAMASTER}")
    theirs = AkamasterNet(n=(depth - 2) // 6)
    published = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    missing = theirs.load_state_dict({k.removeprefix("module."): v for k, v in published.items()}, strict=False)
    assert not missing.unexpected_keys and all(k.endswith("num_batches_tracked") for k in missing.missing_keys)
    run_dir = import_into(tmp_path, "akamaster", path, None)
    same_outputs(imported_net(run_dir), theirs)


@pytest.mark.parametrize("depth,reference", [(18, torchvision.models.resnet18), (34, torchvision.models.resnet34)])
def test_a_torchvision_state_dict_round_trips_through_import_and_export(tmp_path, monkeypatch, depth, reference):
    from resexp.run import setup

    monkeypatch.setattr(setup, "device_memory", lambda device: 2**30)  # a laptop that could not train it at batch 256
    theirs = randomised(reference())
    state = theirs.state_dict()
    torch.save(state, tmp_path / "tv.pth")
    run_dir = import_into(tmp_path, "torchvision", tmp_path / "tv.pth", "tv")
    assert run_dir.parts[-3:-1] == ("tv", "imagenet") and run_dir.name.startswith(f"residual-{depth}B_s0+")
    result = resexp("export", str(run_dir), str(tmp_path / "out.pth"), "--to", "torchvision", cwd=tmp_path)
    assert result.code == 0, result.stderr
    back = torch.load(tmp_path / "out.pth", weights_only=True)
    assert list(back) == list(state) and all(torch.equal(back[k], state[k]) for k in state)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(imported_net(run_dir).eval()(x), theirs.eval()(x))


def test_train_refuses_to_continue_an_imported_net(tmp_path):
    run_dir = import_into(tmp_path, "akamaster", akamaster_file(AkamasterNet(n=1), tmp_path / "resnet8.th"), "mine")
    before = {p: p.read_bytes() for p in run_dir.rglob("*")}
    result = resexp(
        "train", "name=mine", "model.depth=8", "data.normalize=imagenet", "schedule.iterations=78200", cwd=tmp_path
    )
    assert result.code == 1 and len(result.lines) == 1, result.stderr
    assert "holds a net imported from akamaster (resnet8.th)" in result.lines[0]
    assert "resexp train does not continue it" in result.lines[0]
    assert {p: p.read_bytes() for p in run_dir.rglob("*")} == before


# --------------------------------------------------------------------------- resexp eval


def files_of(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run but eval's, as bytes."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "eval" not in p.parts
    }


def test_eval_makes_the_papers_test_protocols_and_leaves_the_training_files_alone(tmp_path):
    from test_imagenet import SMALL, jpeg_tree

    tree = jpeg_tree(tmp_path / "imagenet", {"train": 2, "val": 3})
    overrides = ["model=imagenet", "model.depth=18", "data=imagenet", f"data.root={tree}", *SMALL]
    result = resexp("train", *overrides, "data.batch_size=2", "schedule.iterations=2", "eval_every=1", cwd=tmp_path)
    assert result.code == 0, result.stderr
    [run_dir] = [p.parent for p in tmp_path.rglob("metrics.jsonl")]
    before = files_of(run_dir)
    assert "best.pt" in before  # the lowest test error's checkpoint, a hard link
    test_errors = [r["test/error"] for r in rows(run_dir)]
    best_step = int(torch.load(run_dir / "best.pt", weights_only=True)["step"])
    assert test_errors[best_step - 1] == min(test_errors) and test_errors.index(min(test_errors)) == best_step - 1
    for args, name, views in (
        ((), "latest", 1),
        (("data.ten_crop=true",), "latest+ten_crop", 10),
        (("data.test_scales=[32,48]",), "latest+test_scales-32_48", 4),
        (("data.ten_crop=true", "--best"), "best+ten_crop", 10),
    ):
        out = resexp("eval", str(tmp_path / "runs"), *args, cwd=tmp_path)
        assert out.code == 0, out.stderr
        record = json.loads((run_dir / "eval" / f"{name}.json").read_text())
        assert record["views_per_image"] == views and record["images"] == 6
        assert record["test/error"] in [100 * k / 6 for k in range(7)]
        assert record["checkpoint"]["step"] == (best_step if name.startswith("best") else 2)
        assert f"eval/{name}.json" in out.stdout
    assert files_of(run_dir) == before
    # a run that trained with 10-crop evaluations is evaluated, and its file named, as it was tested
    args = ("train", *overrides, "data.batch_size=2", "schedule.iterations=1", "data.ten_crop=true", "name=tc")
    assert resexp(*args, cwd=tmp_path).code == 0
    out = resexp("eval", str(tmp_path / "runs/tc"), cwd=tmp_path)
    [tc] = (tmp_path / "runs/tc").rglob("eval/*.json")
    assert out.code == 0 and tc.name == "latest+ten_crop.json" and json.loads(tc.read_text())["views_per_image"] == 10
    latest = json.loads((run_dir / "eval" / "latest.json").read_text())
    assert latest["test/error"] == rows(run_dir)[-1]["test/error"]  # the same net, the same test as training's
    report = resexp("report", str(tmp_path / "runs"), cwd=tmp_path)
    header = next(line for line in report.stdout.splitlines() if line.startswith("| data"))
    assert "eval test error (latest+ten_crop)" in header and "eval test error (best+ten_crop)" in header
    html = resexp("report", str(tmp_path / "runs"), "--format", "html", cwd=tmp_path)
    assert (
        html.code == 0 and "eval test error (latest+test_scales-32_48)" in (tmp_path / "runs/report.html").read_text()
    )


def test_imported_nets_are_evaluated_and_reported(tmp_path, cifar_npz):
    torch.manual_seed(0)
    theirs = randomised(AkamasterNet(n=1))
    run_dir = import_into(tmp_path, "akamaster", akamaster_file(theirs, tmp_path / "resnet8.th"))
    out = resexp("eval", str(tmp_path / "runs"), f"data.root={cifar_npz.parent}", cwd=tmp_path)
    assert out.code == 0, out.stderr
    record = json.loads((run_dir / "eval" / "latest.json").read_text())
    from resexp.data.cifar import load_npz

    x, y = torch.from_numpy(load_npz(cifar_npz, 10).x_test), torch.from_numpy(load_npz(cifar_npz, 10).y_test)
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    with torch.no_grad():
        logits = theirs.eval()((x.permute(0, 3, 1, 2) / 255 - mean) / std)
    errors = (logits.argmax(1) != y).sum().item()
    assert record["images"] == len(y) and record["test/error"] == pytest.approx(100 * errors / len(y))
    # the loss sees the inputs' scale where a barely trained net's argmax may not: ImageNet's mean and std, fixed
    assert record["test/loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y.long()).item(), rel=1e-4)
    report = resexp("report", str(tmp_path / "runs"), cwd=tmp_path).stdout
    [line] = [line for line in report.splitlines() if "ResNet-8" in line]
    assert "1 imported" in line and f"{record['test/error']:.2f}" in line and "Runs not complete" not in report
    plot = resexp("plot", str(tmp_path / "runs"), cwd=tmp_path)
    assert plot.code == 1 and "have no curves: they were imported" in plot.lines[0]
    assert resexp("report", str(tmp_path / "runs"), "--format", "html", cwd=tmp_path).code == 0
    page = (tmp_path / "runs/report.html").read_text()
    assert "curves (" not in page and "1 imported" in page


def test_every_bad_import_or_eval_is_one_line_and_writes_nothing(tmp_path, tiny_run):
    bottleneck = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), bottleneck)
    odd = tmp_path / "odd.pth"
    torch.save(
        {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("layer4.1.")}, odd
    )
    akamaster = akamaster_file(AkamasterNet(n=1), tmp_path / "resnet8.th")
    truncated = tmp_path / "cut.th"
    truncated.write_bytes(akamaster.read_bytes()[:1000])
    tiny_weights = tmp_path / "tiny.pt"
    assert resexp("export", str(tiny_run[0]), str(tiny_weights), cwd=tmp_path).code == 0
    untrained = tmp_path / "untrained"
    shutil.copytree(tiny_run[0], untrained / "run")
    for name in ("last.pt", "prev.pt", "best.pt"):
        (untrained / "run" / name).unlink(missing_ok=True)
    cases = [
        (("import", "timm", str(akamaster)), "'timm' is not a source resexp imports from"),
        (("import", "akamaster", str(tmp_path / "none.th")), "none.th is not a file"),
        (("import", "akamaster", str(truncated)), "cut.th is not a weights file torch can read"),
        (("import", "akamaster", str(odd)), "odd.pth is not one of akamaster's CIFAR ResNets"),
        (("import", "torchvision", str(akamaster)), "resnet8.th is not a torchvision ResNet state_dict"),
        (("import", "torchvision", str(bottleneck)), "torchvision's ResNet-50: torchvision's bottleneck nets stride"),
        (("import", "torchvision", str(odd)), "(2, 2, 2, 1) blocks per stage: not torchvision's ResNet-18"),
        (("import", "akamaster", str(akamaster), "--name", "../up"), "name='../up' must be a folder name"),
        (("import", "akamaster", str(akamaster), "--name", "a,b"), "--name a,b: one folder name, without commas"),
        (("eval", str(untrained)), "has no checkpoint to evaluate"),
        (("train", *TINY, f"resume={tiny_weights}"), "holds weights only (resexp export, or an imported net)"),
        (("eval", str(tmp_path / "nowhere")), "nowhere is not a folder"),
        (("eval", str(tiny_run[0]), "model.depth=56"), "model.depth is not a test-time option"),
        (("eval", str(tiny_run[0]), "data.ten_crop=maybe"), "data.ten_crop=maybe"),
        (("eval", str(tiny_run[0]), "data.test_scales=[224]"), "needs data=imagenet"),
        (("eval", str(tiny_run[0]), "data.ten_crop=true"), "ImageNet's 10-crop test"),  # before: one view, named 10
    ]
    inputs = set(leftovers(tmp_path))
    for args, message in cases:
        result = resexp(*args, cwd=tmp_path)
        assert result.code == 1 and len(result.lines) == 1 and message in result.lines[0], (args, result.stderr)
        assert set(leftovers(tmp_path)) == inputs, args
    before = files_of(tiny_run[0])
    assert resexp("eval", str(tiny_run[0]), "device=cuda:7", cwd=tmp_path).code == 1
    assert files_of(tiny_run[0]) == before and not (tiny_run[0] / "eval").exists()


def test_imagenet_normalisation_is_imagenets_fixed_mean_and_std_whatever_the_training_set():
    from resexp.data.cifar import Normalizer

    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    expected = (x.permute(0, 3, 1, 2) / 255 - mean) / std
    for train in (x.numpy(), (x.numpy() // 2)):  # another training set: the same normalisation
        torch.testing.assert_close(Normalizer(train, "imagenet", torch.device("cpu"))(x), expected)


def test_best_pt_is_the_lowest_evaluation_counting_those_before_a_resume(tmp_path):
    from resexp.launch.jobs import compose
    from resexp.nets.build import build_model
    from resexp.run.checkpoint import Checkpointer, TrainState
    from resexp.run.schedule import Schedule
    from resexp.run.setup import make_optimizer
    from resexp.rundir.folder import RunDir

    cfg = compose(TINY)
    model = build_model(cfg, 10)
    parts = (model, make_optimizer(model, 0.1, 0.9, 1e-4), Schedule(0.1, cfg.schedule))
    before = [{"step": 8, "test/error": 10.0}]  # the evaluations of the run before it was resumed
    checkpoints = Checkpointer(RunDir(tmp_path), cfg, *parts, rows=before)
    checkpoints.save(TrainState(step=16), {"step": 16, "test/error": 20.0})
    assert not (tmp_path / "best.pt").exists()  # worse than before the resume
    checkpoints.save(TrainState(step=24), {"step": 24, "test/error": 5.0})
    checkpoints.save(TrainState(step=32), {"step": 32, "test/error": 6.0})
    assert torch.load(tmp_path / "best.pt", weights_only=True)["step"] == 24
    assert (tmp_path / "best.pt").stat().st_ino == (tmp_path / "prev.pt").stat().st_ino  # a link, not a copy


def test_an_import_killed_half_way_is_never_a_run_and_the_next_import_clears_it(tmp_path, monkeypatch):
    """Before: SIGKILL during an import left a hidden staging folder that report and eval read as a
    second copy of the run, forever."""
    import errno

    akamaster = akamaster_file(AkamasterNet(n=1), tmp_path / "resnet8.th")
    assert resexp("import", "akamaster", str(akamaster), cwd=tmp_path).code == 0
    [run_dir] = [p.parent for p in (tmp_path / "runs").rglob("status.json")]
    killed = run_dir.with_name(f".{run_dir.name}.importing-999999999")  # a pid that is no process
    shutil.copytree(run_dir, killed)
    report = resexp("report", "runs", "--format", "json", cwd=tmp_path)
    assert report.code == 0 and [r["n"] for r in json.loads(report.stdout)["rows"]] == [1], report.stdout
    shutil.rmtree(run_dir)
    assert resexp("report", "runs", cwd=tmp_path).code == 1  # the staging folder alone is no run either
    assert resexp("import", "akamaster", str(akamaster), cwd=tmp_path).code == 0
    assert not killed.exists() and (run_dir / "weights.pt").exists()
    # A full disk while the weights are written: the one line the system gives, and nothing left.
    shutil.rmtree(run_dir)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    result = resexp("import", "akamaster", str(akamaster), cwd=tmp_path)
    assert (
        result.code == 1
        and result.lines == [f"error: No space left on device: {run_dir.parent}"]
        or (result.code == 1 and len(result.lines) == 1 and "No space left on device" in result.lines[0])
    ), result.stderr
    assert not run_dir.exists() and not list(run_dir.parent.glob(".*"))


def test_eval_of_a_run_whose_data_json_is_gone_holds_it_to_its_checkpoints_data(tmp_path):
    """Before: with data.json gone, eval evaluated on whatever data it was given."""
    from conftest import write_npz

    write_npz(tmp_path / "a.npz", n_train=64, n_test=32)
    import numpy as np

    write_npz(tmp_path / "b.npz", n_train=64, n_test=32, x_test=np.zeros((32, 32, 32, 3), dtype=np.uint8))
    args = ["data.root=a.npz", "model.depth=8", "schedule.iterations=4", "eval_every=4", "data.batch_size=16"]
    assert resexp("train", *args, "device=cpu", cwd=tmp_path).code == 0
    run_dir = tmp_path / folder(*args)
    (run_dir / "data.json").unlink()
    other = resexp("eval", str(run_dir), f"data.root={tmp_path / 'b.npz'}", cwd=tmp_path)
    assert other.code == 1 and "the data its checkpoint names" in other.lines[-1], other.stderr
    assert not (run_dir / "eval").exists()
    same = resexp("eval", str(run_dir), cwd=tmp_path)
    assert same.code == 0 and (run_dir / "eval" / "latest.json").exists(), same.stderr


def test_report_shows_an_eval_only_as_of_the_checkpoint_it_was_made_on(tmp_path, monkeypatch):
    """Before: an eval of iteration 10 was reported as the run's "latest" after the run went on to 16."""
    import signal

    from conftest import signal_at

    signal_at(monkeypatch, 10, signal.SIGINT)
    assert resexp("train", *TINY, cwd=tmp_path).code == 130
    monkeypatch.undo()
    run_dir = tmp_path / folder(*TINY)
    assert resexp("eval", str(run_dir), cwd=tmp_path).code == 0
    early = resexp("report", "runs", "--format", "json", cwd=tmp_path)
    assert "latest" in json.loads(early.stdout)["rows"][0]["evals"]
    assert resexp("train", *TINY, cwd=tmp_path).code == 0  # on to 16
    late = resexp("report", "runs", "--format", "json", cwd=tmp_path)
    assert late.code == 0 and json.loads(late.stdout)["rows"][0]["evals"] == {}
    assert "it evaluated iteration 10, and the run's latest checkpoint is at 16 now" in late.stderr, late.stderr
