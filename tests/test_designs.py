"""The counterfactual nets (model.norm, model.init, model.block, model.body) and the signal
analysis: the defaults are resexp 0.2's nets to the bit, every switch does what its paper says,
nonsense combinations are refused, and the signal numbers are those of a hand computation."""

import hashlib
import json
import math

import pytest
import torch
from torch import nn

from conftest import REPO, TINY, folder, leftovers, resexp, rows
from resexp.analysis.lesion import blocks_of, changes_shape, without
from resexp.analysis.signal import propagation
from resexp.errors import UserError
from resexp.nets.blocks import Bias, Block, Scale
from resexp.nets.build import build_net
from resexp.nets.costs import count_params

# resexp 0.2's nets, built with torch.manual_seed(0): the SHA-256 of their initial state_dict
# (names and values) and of their modules' names and types, recorded from that version's models.py.
GOLDEN = {
    ("cifar", 20, "plain", "A", 10): ("9ebdd4d917385ecc", "5049dce65d87eca1"),
    ("cifar", 20, "residual", "A", 10): ("9ebdd4d917385ecc", "bdc78c2cd50d04a9"),
    ("cifar", 14, "residual", "C", 10): ("3754f87fc9f7ab6c", "dad1fdf82996a8d0"),
    ("imagenet", 18, "residual", "B", 1000): ("1d98b0d0d80a50a9", "f060b4074e238565"),
    ("imagenet", 50, "plain", "B", 1000): ("d63a94d3a866276a", "fc8890ee6a35dac1"),
    ("imagenet", 50, "residual", "B", 1000): ("f9cb3fcab3184819", "887f7eff88806e47"),
}


@pytest.mark.parametrize("args", list(GOLDEN))
def test_the_defaults_build_resexp_0_2s_nets_to_the_bit(args):
    torch.manual_seed(0)
    net = build_net(*args)
    state = hashlib.sha256()
    for key, value in net.state_dict().items():
        state.update(key.encode())
        state.update(value.detach().contiguous().numpy().tobytes())
    modules = " ".join(f"{n}:{type(m).__name__}" for n, m in net.named_modules())
    assert (state.hexdigest()[:16], hashlib.sha256(modules.encode()).hexdigest()[:16]) == GOLDEN[args]


@pytest.mark.parametrize(
    "family,depth,shortcut", [("cifar", 14, "A"), ("cifar", 14, "B"), ("cifar", 14, "C"), ("imagenet", 50, "B")]
)
@pytest.mark.parametrize("mode", ["plain", "residual"])
def test_without_normalisation_every_bn_is_gone_and_every_conv_has_a_bias(family, depth, shortcut, mode):
    net = build_net(family, depth, mode, shortcut, 10, norm="none")
    assert not [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    x = torch.randn(2, 3, 32, 32) if family == "cifar" else torch.randn(2, 3, 64, 64)
    assert net(x).shape == (2, 10)


@pytest.mark.parametrize(
    "norm,init,block",
    [
        ("batch", "zero_gamma", "post"),
        ("none", "skipinit", "post"),
        ("none", "fixup", "post"),
        ("none", "skipinit", "pre"),
    ],
)
@pytest.mark.parametrize("train", [True, False])
def test_a_branch_started_at_zero_makes_each_block_the_identity(norm, init, block, train):
    """Every residual block that keeps its input's shape is exactly the identity in a freshly built
    net: the net computes what the net without those blocks computes."""
    torch.manual_seed(0)
    net = build_net("cifar", 20, "residual", "A", 10, norm=norm, init=init, block=block).train(train)
    keeps_shape = {i for i, (_, _, b) in enumerate(blocks_of(net)) if not changes_shape(b)}
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        whole = net(x)
        with without(net, keeps_shape):
            shorter = net(x)
    assert len(keeps_shape) == 7 and torch.equal(whole, shorter)


def test_he_init_does_not_start_at_the_identity():
    torch.manual_seed(0)
    net = build_net("cifar", 20, "residual", "A", 10).eval()
    keeps_shape = {i for i, (_, _, b) in enumerate(blocks_of(net)) if not changes_shape(b)}
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        whole = net(x)
        with without(net, keeps_shape):
            assert not torch.equal(whole, net(x))


@pytest.mark.parametrize(
    "depth,body,published",
    [(110, None, 1.7e6), (164, "bottleneck", 1.7e6), (1001, "bottleneck", 10.2e6)],
)
def test_pre_activation_parameter_counts_are_the_published_ones(depth, body, published):
    """He et al. 2016, Table 4 (CIFAR-10): 1.7M, 1.7M and 10.2M (counted here: 1.73M, 1.66M and 10.29M:
    the paper rounds)."""
    with torch.device("meta"):
        net = build_net("cifar", depth, "residual", "A", 10, block="pre", body=body)
    assert count_params(net) == pytest.approx(published, rel=0.03)


def test_a_pre_activation_block_adds_last_and_the_net_ends_in_bn_relu():
    net = build_net("cifar", 20, "residual", "A", 10, block="pre")
    blocks = [m for m in net.modules() if isinstance(m, Block)]
    assert not any(b.post_relu for b in blocks)
    assert [type(m) for m in blocks[0].body] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert [type(m) for m in net.stem] == [nn.Conv2d]  # the first block's BN-ReLU follows
    assert [type(m) for m in net.head][:2] == [nn.BatchNorm2d, nn.ReLU]
    x = torch.randn(2, 3, 32, 32)
    out = blocks[1](blocks[0](net.stem(x)))
    assert (out < 0).any()  # nothing clips the stream after an addition


def test_fixup_scales_each_branch_and_starts_its_last_layer_and_the_classifier_at_zero():
    """Zhang et al. 2019: L = 27 branches of m = 2 layers in ResNet-56: the first layer of each
    branch He-initialised times 27^(-1/2); the last layer, the classifier, the biases at 0; the
    multipliers at 1."""
    torch.manual_seed(0)
    net = build_net("cifar", 56, "residual", "A", 10, norm="none", init="fixup")
    firsts = []
    for block in (m for m in net.modules() if isinstance(m, Block)):
        first, last = [m for m in block.body if isinstance(m, nn.Conv2d)]
        firsts.append(first.weight.flatten() / math.sqrt(2 / (first.out_channels * 9)))  # He's std (fan-out)
        assert not last.weight.any() and [type(m) for m in block.body].count(Bias) == 4
    assert torch.cat(firsts).std().item() == pytest.approx(27**-0.5, rel=0.03)
    assert not net.head[-1].weight.any() and not net.head[-1].bias.any()
    scalars = [m for m in net.modules() if isinstance(m, (Bias, Scale))]
    assert all(float((m.bias if isinstance(m, Bias) else m.weight - 1).detach()) == 0 for m in scalars)


def test_skipinit_multiplies_each_residual_branch_by_a_scalar_at_zero():
    net = build_net("cifar", 20, "residual", "A", 10, norm="none", init="skipinit")
    scales = [b.body[-1] for b in net.modules() if isinstance(b, Block)]
    assert len(scales) == 9 and all(isinstance(s, Scale) and float(s.weight.detach()) == 0 for s in scales)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.init=fixup"],
            "model.init=fixup trains without normalisation (Zhang et al. 2019): add model.norm=none",
        ),
        (["model.init=skipinit"], "model.init=skipinit trains without normalisation (De and Smith 2020)"),
        (["model.init=zero_gamma", "model.norm=none"], "model.init=zero_gamma zeroes the last BN scale"),
        (["model.init=fixup", "model.norm=none", "model.mode=plain"], "a plain net has none: use model.mode=residual"),
        (["model.init=zero_gamma", "model.mode=plain"], "model.init=zero_gamma initialises residual branches"),
        (["model.init=fixup", "model.norm=none", "model.block=pre"], "model.init=fixup is defined for the 2015 block"),
        (["model.init=zero_gamma", "model.block=pre"], "model.init=zero_gamma with model.block=pre builds branches"),
        (["model.body=bottleneck", "model.depth=21"], "model.depth=21 is not a CIFAR depth: valid depths are 9n+2"),
        (["model=imagenet", "model.depth=18", "model.body=bottleneck"], "does not fit ImageNet depth 18"),
        (["model.norm=group"], "model.norm=group is not valid: expected one of batch, none"),
        (["model.init=lsuv"], "model.init=lsuv is not valid: expected one of he, xavier, zero_gamma, skipinit, fixup"),
    ],
)
def test_combinations_that_make_no_sense_are_one_line(tmp_path, overrides, message):
    result = resexp("train", *TINY, *overrides, cwd=tmp_path)
    assert result.code == 1 and len(result.lines) == 1 and message in result.lines[0], result.stderr
    assert leftovers(tmp_path) == []


def test_a_counterfactual_run_is_its_own_experiment_and_trains_in_bf16_too(tmp_path):
    """The switches are part of a run's identity and folder name; the fast path on a CPU (bf16
    autocast, channels_last) takes the new modules."""
    args = [*TINY, "model.norm=none", "model.init=fixup", "speed.precision=bf16"]
    result = resexp("train", *args, cwd=tmp_path)
    assert result.code == 0, result.stderr
    run_dir = tmp_path / folder(*args)
    assert "+norm-none+init-fixup+" in run_dir.name
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["speed"]["precision"] == "bf16" and env["speed"]["channels_last"]
    assert all(math.isfinite(r["train/loss"]) for r in rows(run_dir))
    report = resexp("report", "runs", cwd=tmp_path)
    assert "init=fixup" in report.stdout or "-" in report.stdout


def test_a_run_made_before_the_switches_still_resumes(tmp_path, monkeypatch):
    """A checkpoint and config.yaml of resexp 0.2 (no norm, init, block or body; no identity,
    data or metrics keys in the checkpoint) resume as the 2015 net they are."""
    import signal

    import yaml

    from conftest import signal_at

    signal_at(monkeypatch, 10, signal.SIGINT)
    assert resexp("train", *TINY, cwd=tmp_path).code == 130
    monkeypatch.undo()
    run_dir = tmp_path / folder(*TINY)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("norm", "init", "block", "body"):
        del config["model"][key]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    for name in ("last.pt", "prev.pt"):
        saved = torch.load(run_dir / name, weights_only=True)
        for key in ("identity", "data", "began", "metrics"):
            saved.pop(key, None)
        saved["model_fields"] = {
            k: v for k, v in saved["model_fields"].items() if k.split(".")[-1] not in ("norm", "init", "block", "body")
        }
        torch.save(saved, run_dir / name)
    status = json.loads((run_dir / "status.json").read_text())
    status.pop("identity")
    (run_dir / "status.json").write_text(json.dumps(status))
    again = resexp("train", *TINY, cwd=tmp_path)
    assert again.code == 0 and "resuming" in again.stderr, again.stderr
    assert [r["step"] for r in rows(run_dir)] == [8, 16]


def test_runs_of_the_resexp_before_the_switches_keep_their_identity_digest():
    """status.json's digest, as the resexp before norm/init/block/body wrote it (golden values
    computed with that version): a run it made is still the run its folder says, for report,
    analyze and resume; a switch away from its default is another run."""
    from resexp import identity
    from resexp.config import Config, ModelConfig, OptimConfig

    assert identity.digest(identity.of(Config())) == "94ab6724b8d1"
    plain = Config(model=ModelConfig(depth=56, mode="plain"), optim=OptimConfig(lr=0.05))
    assert identity.digest(identity.of(plain)) == "1c89122b51da"
    for key, value in (("norm", "none"), ("init", "xavier"), ("block", "pre"), ("body", "bottleneck")):
        depth = 47 if key == "body" else 56  # 9n+2 for bottlenecks
        switched = Config(model=ModelConfig(depth=depth, mode="plain", **{key: value}))
        default = Config(model=ModelConfig(depth=depth, mode="plain"))
        assert identity.digest(identity.of(switched)) != identity.digest(identity.of(default)), key


# --------------------------------------------------------------------------- the signal analysis


def test_the_signal_numbers_are_those_of_a_hand_computation():
    """On ResNet-8 (three blocks): the stream's std and gradient norm after the stem and each
    block, and each branch's norm over its shortcut's, computed here block by block."""
    torch.manual_seed(0)
    net = build_net("cifar", 8, "residual", "A", 10)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    found = propagation(net, x, y)
    hand = __import__("copy").deepcopy(net).train()
    streams, ratios = [hand.stem(x)], []
    for block in blocks_of_net(hand):
        branch, shortcut = block.body(streams[-1]), block.shortcut(streams[-1])
        ratios.append((branch.norm() / shortcut.norm()).item())
        streams.append(torch.relu(branch + shortcut))
    loss = nn.functional.cross_entropy(hand.head(streams[-1]), y)
    grads = torch.autograd.grad(loss, streams)
    assert found["std"] == pytest.approx([s.std().item() for s in streams], rel=1e-5)
    assert found["gradient"] == pytest.approx([g.norm().item() for g in grads], rel=1e-5)
    assert found["branch_ratio"] == pytest.approx(ratios, rel=1e-5) and found["loss"] == pytest.approx(loss.item())


def blocks_of_net(net):
    return [b for _, _, b in blocks_of(net)]


def test_signal_at_init_straight_from_a_config(tmp_path):
    """No trained run needed: the nets of a sweep's config, analysed as they begin."""
    args = ["signal", "--at-init", "data=synthetic", "model.depth=8,20", "model.mode=plain,residual", "device=cpu"]
    result = resexp("analyze", *args, "--device", "cpu", cwd=tmp_path)
    assert result.code == 0, result.stderr
    analysis = tmp_path / "runs/default/analysis"
    doc = json.loads((analysis / "signal-config+data-synthetic+depth-8,20+mode-plain,residual.json").read_text())
    assert sorted(r["net"] for r in doc["records"]) == ["ResNet-20", "ResNet-8", "plain-20", "plain-8"]
    assert {v["outcome"] for v in doc["verdicts"]} <= {"agrees", "does not agree", "cannot decide"}
    assert not (tmp_path / "runs/default/synthetic").exists()  # nothing trained, no run folders
    # Other nets of the same preset: their own files, the first analysis kept.
    zero = ["data=synthetic", "model.depth=8", "model.mode=residual", "model.init=zero_gamma"]
    assert resexp("analyze", "signal", "--at-init", *zero, "--device", "cpu", cwd=tmp_path).code == 0
    assert doc["configs"] == args[2:]  # what was analysed, also where the name is a hash
    [other] = analysis.glob("signal-config+*init-zero_gamma*.json")
    assert [r["net"] for r in json.loads(other.read_text())["records"]] == ["ResNet-8"]
    assert len(list(analysis.glob("signal-config+*.json"))) == 2
    trained = resexp("analyze", "signal", "data=synthetic", cwd=tmp_path)
    assert trained.code == 1 and "a config has no trained weights: add --at-init" in trained.lines[-1]


# --------------------------------------------------------------------------- designs as their papers build them


def test_fixup_has_scalar_biases_only_and_the_2015_nets_parameters_less_bn_plus_its_scalars():
    """Zhang et al. 2019: no normalisation, and no per-channel biases in the branches: a scalar bias
    before each conv and activation, a scalar multiplier per branch. ResNet-20: 269,722 parameters
    with BN; less its 1,376 BN parameters; plus 9 branches x 5 scalars, the stem's and the
    classifier's scalar bias: 268,393."""
    fixup = build_net("cifar", 20, "residual", "A", 10, norm="none", init="fixup")
    assert all(c.bias is None for c in fixup.modules() if isinstance(c, nn.Conv2d))
    paper = build_net("cifar", 20, "residual", "A", 10)
    bn = sum(p.numel() for m in paper.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    scalars = sum(1 for m in fixup.modules() if isinstance(m, (Bias, Scale)))
    assert (count_params(paper), bn, scalars) == (269_722, 1_376, 47)
    assert count_params(fixup) == 269_722 - 1_376 + 47 == 268_393


def test_a_pre_activation_unit_that_changes_shape_pre_activates_before_the_split():
    """He et al. 2016's code (resnet-pre-act.lua): the unit's BN-ReLU is shared by the branch and
    the shortcut, whose projection is a bare 1x1 conv; a bottleneck strides in its first 1x1."""
    net = build_net("cifar", 29, "residual", "B", 10, block="pre", body="bottleneck")
    first, second = net.stages[1][0], net.stages[1][1]
    assert [type(m) for m in first.preact] == [nn.BatchNorm2d, nn.ReLU]
    assert (
        isinstance(first.body[0], nn.Conv2d) and first.body[0].stride == (2, 2) and first.body[0].kernel_size == (1, 1)
    )
    assert [type(m) for m in first.shortcut] == [nn.Conv2d]
    assert second.preact is None and isinstance(second.body[0], nn.BatchNorm2d)  # the shape kept: inside the branch
    x = torch.randn(2, 64, 32, 32)
    with torch.no_grad():
        a = first.preact(x)
        assert torch.equal(first(x), first.body(a) + first.shortcut(a))
    # removing the branch (lesion) leaves what both paths read, then the shortcut
    [index] = [i for i, (_, _, b) in enumerate(blocks_of(net)) if b is first]
    with torch.no_grad(), without(net, {index}):
        assert torch.equal(net.stages[1][0](x), first.shortcut(first.preact(x)))


def test_pre_and_zero_gamma_are_refused_and_the_builder_would_kill_the_branch():
    from resexp.config import ModelConfig, design

    with pytest.raises(ValueError, match="pre-activation branch's last BN is followed by a ReLU"):
        design(ModelConfig(init="zero_gamma", block="pre"))


def fake_old_fixup(run_dir):
    """The run's checkpoints as an earlier resexp wrote them for Fixup: a bias on every branch conv."""
    for name in ("last.pt", "prev.pt"):
        path = run_dir / name
        if path.exists():
            saved = torch.load(path, weights_only=True)
            convs = [k for k, v in saved["model"].items() if ".body." in k and k.endswith(".weight") and v.dim() == 4]
            saved["model"].update(
                {k[: -len("weight")] + "bias": torch.zeros(saved["model"][k].shape[0]) for k in convs}
            )
            torch.save(saved, path)


def test_runs_of_a_design_whose_build_changed_are_one_line_everywhere(tmp_path):
    """A Fixup run made with per-channel conv biases: resume, analyze, eval and the hub each say
    in one line that the design changed, and nothing is written."""
    import signal

    args = [*TINY, "model.norm=none", "model.init=fixup"]
    from conftest import signal_at

    mp = pytest.MonkeyPatch()
    signal_at(mp, 10, signal.SIGINT)
    assert resexp("train", *args, cwd=tmp_path).code == 130
    mp.undo()
    run_dir = tmp_path / folder(*args)
    fake_old_fixup(run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    resumed = resexp("train", *args, cwd=tmp_path)
    assert (
        resumed.code == 1
        and "whose design changed since (Fixup's branch convolutions had per-channel biases" in (resumed.lines[-1])
    ), resumed.stderr
    analysed = resexp("analyze", "signal", str(run_dir), cwd=tmp_path)
    assert analysed.code == 1 and "design changed" in analysed.lines[-1], analysed.stderr
    evaluated = resexp("eval", str(run_dir), cwd=tmp_path)
    assert evaluated.code == 1 and "design changed" in evaluated.lines[-1], evaluated.stderr
    with pytest.raises(UserError, match="design changed"):
        torch.hub.load(str(REPO), "resexp_net", source="local", trust_repo=True, weights=str(run_dir / "last.pt"))
    assert sorted(p.name for p in run_dir.iterdir()) == before
