"""The paper's facts about the networks (He et al. 2015, Sec. 3.3, 3.4, 4.2; Tables 1 and 6)."""

import pytest
import torch
import torchvision

from resexp.nets.blocks import Block, ZeroPadIdentity
from resexp.nets.build import build_net
from resexp.nets.costs import cost, count_macs, count_params, training_memory, variant_rows
from resexp.nets.spec import net_spec


@pytest.mark.parametrize("depth,millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_cifar_parameter_counts_match_table_6(depth, millions):
    params = count_params(build_net("cifar", depth, "residual", "A", 10))
    digits = 1 if millions >= 1 else 2
    assert round(params / 1e6, digits) == millions


@pytest.mark.parametrize(
    "family,depth", [("cifar", 20), ("cifar", 56), ("imagenet", 18), ("imagenet", 34), ("imagenet", 50)]
)
def test_plain_and_option_a_residual_have_the_same_parameters(family, depth):
    plain = build_net(family, depth, "plain", "A", 10)
    residual = build_net(family, depth, "residual", "A", 10)
    assert count_params(plain) == count_params(residual)
    assert [k for k, _ in plain.named_parameters()] == [k for k, _ in residual.named_parameters()]


@pytest.mark.parametrize(
    "depth,reference",
    [(18, torchvision.models.resnet18), (34, torchvision.models.resnet34), (50, torchvision.models.resnet50)],
)
def test_imagenet_option_b_matches_torchvision(depth, reference):
    assert count_params(build_net("imagenet", depth, "residual", "B", 1000)) == count_params(reference())


def test_shortcut_options_order_parameters():
    a, b, c = (count_params(build_net("cifar", 20, "residual", o, 10)) for o in "ABC")
    assert a < b < c  # B adds two projections (stages 2, 3), C one per block


@pytest.mark.parametrize(
    "family,depth,mode,shortcut,size",
    [
        ("cifar", 8, "plain", "A", 32),
        ("cifar", 8, "residual", "A", 32),
        ("cifar", 8, "residual", "B", 32),
        ("cifar", 8, "residual", "C", 32),
        ("imagenet", 18, "residual", "B", 64),
        ("imagenet", 50, "residual", "A", 64),
        ("imagenet", 50, "plain", "C", 64),
    ],
)
def test_output_shape_and_every_parameter_gets_a_gradient(family, depth, mode, shortcut, size):
    torch.manual_seed(0)
    net = build_net(family, depth, mode, shortcut, 7)
    out = net(torch.randn(4, 3, size, size))
    assert out.shape == (4, 7)
    out.logsumexp(1).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_plain_blocks_have_no_shortcut_and_residual_blocks_add_one():
    plain = build_net("cifar", 20, "plain", "A", 10)
    residual = build_net("cifar", 20, "residual", "A", 10)
    plain_blocks = [m for m in plain.modules() if isinstance(m, Block)]
    assert len(plain_blocks) == 9 and all(b.shortcut is None for b in plain_blocks)
    # Same weights, so the only difference between the nets is the shortcut addition.
    residual.load_state_dict(plain.state_dict())
    plain.eval(), residual.eval()
    x = torch.randn(2, 3, 32, 32)
    block = residual.stages[0][0]
    h = residual.stem(x)
    assert torch.allclose(block(h), torch.relu(block.body(h) + h))
    assert not torch.allclose(plain(x), residual(x))


def test_option_a_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadIdentity(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


def test_cifar_stage_layout():
    spec = net_spec("cifar", 56)
    assert [(s.blocks, s.width, s.stride) for s in spec.stages] == [(9, 16, 1), (9, 32, 2), (9, 64, 2)]


def test_bottleneck_downsamples_in_its_first_1x1_conv_as_in_the_paper():
    net = build_net("imagenet", 50, "residual", "B", 1000)
    first_of_stage_2 = net.stages[1][0]
    assert first_of_stage_2.body[0].kernel_size == (1, 1) and first_of_stage_2.body[0].stride == (2, 2)


@pytest.mark.parametrize("depth,gflops", [(18, 1.8), (34, 3.6), (50, 3.8), (101, 7.6), (152, 11.3)])
def test_imagenet_multiply_adds_match_table_1(depth, gflops):
    with torch.device("meta"):
        net = build_net("imagenet", depth, "residual", "B", 1000)
    assert abs(count_macs(net, 224) / 1e9 - gflops) < 0.1


@pytest.mark.parametrize(
    "family,depth,listed", [("cifar", 21, "6n+2"), ("cifar", 2, "6n+2"), ("imagenet", 19, "18, 34, 50, 101, 152")]
)
def test_invalid_depths_are_rejected_with_the_valid_ones(family, depth, listed):
    with pytest.raises(ValueError, match=f"model.depth={depth}") as e:
        build_net(family, depth, "residual", "A", 10)
    assert listed in str(e.value)


def test_unknown_mode_and_shortcut_are_rejected():
    with pytest.raises(ValueError, match="plain, residual"):
        build_net("cifar", 20, "highway", "A", 10)
    with pytest.raises(ValueError, match="A, B, C"):
        build_net("cifar", 20, "residual", "D", 10)


def test_variant_table_covers_the_standard_variants():
    rows = variant_rows()
    keys = {(r["family"], r["depth"], r["mode"], r["shortcut"]) for r in rows}
    for depth in (20, 32, 44, 56, 110, 1202):
        assert ("cifar", depth, "plain", "-") in keys
        assert {("cifar", depth, "residual", o) for o in "ABC"} <= keys
    for depth in (18, 34, 50, 101, 152):
        assert {("imagenet", depth, "residual", o) for o in "ABC"} <= keys
    r20 = next(r for r in rows if r["family"] == "cifar" and r["depth"] == 20 and r["shortcut"] == "A")
    assert r20["params"] == 269722 and r20["macs"] == 40551040


@pytest.mark.parametrize(
    "family,depth,mode,shortcut",
    [
        ("cifar", 20, "residual", "A"),
        ("cifar", 56, "plain", "A"),
        ("cifar", 110, "residual", "C"),
        ("imagenet", 34, "residual", "B"),
        ("imagenet", 101, "plain", "A"),
    ],
)
def test_variant_costs_counted_per_block_equal_the_whole_net(family, depth, mode, shortcut):
    """`resexp models` counts one block per stage shape and multiplies; the whole net must agree."""
    classes = 10 if family == "cifar" else 1000
    with torch.device("meta"):
        net = build_net(family, depth, mode, shortcut, classes)
    assert cost(family, depth, mode, shortcut, classes) == (
        count_params(net),
        count_macs(net, 32 if family == "cifar" else 224),
    )


def test_training_memory_is_estimated_from_the_spec_without_building_the_net():
    params, needed = training_memory("cifar", 56, 128, 32, 10)
    assert params == pytest.approx(count_params(build_net("cifar", 56, "residual", "A", 10)), rel=0.01)
    assert 0.5e9 < needed < 1.5e9  # measured peak of a ResNet-56 step at batch 128: about 1.2 GiB
    huge_params, huge = training_memory("cifar", 6 * 10**8 + 2, 128, 32, 10)  # instant, though 6n+2 is valid
    assert huge_params > 10**12 and huge > 10**15
    assert training_memory("cifar", 56, 256, 32, 10)[1] > needed
