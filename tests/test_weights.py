"""Weights out of resexp: `resexp export` (resexp's state_dict with the fields that build the net,
or torchvision's names) and `hubconf.py` (torch.hub), against torchvision's own nets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import resexp
from resexp import weights
from resexp.models import build_net

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
    [({"init": "fixup"}, "trains without normalisation"), ({"depth": 21}, "not a CIFAR depth")],
)
def test_the_hub_refuses_what_train_refuses(kwargs, message):
    from resexp.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        hub(**kwargs)


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
    for args, message in cases:
        result = resexp("export", *args, cwd=tmp_path)
        assert result.code == 1 and len(result.lines) == 1 and message in result.lines[0], (args, result.stderr)
        assert not out.exists()


def test_a_truncated_or_foreign_weights_file_is_one_clear_error(tmp_path):
    from resexp.errors import UserError

    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a weights file torch can read"):
        weights.load(tmp_path / "cut.pt")
    with pytest.raises(UserError, match="neither a resexp export"):
        weights.load(tmp_path / "foreign.pt")
