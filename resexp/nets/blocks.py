"""The modules of the networks: convs with their BN or bias, the shortcuts (option A's zero-padded
identity, B/C's projections), the block (post- or pre-activation, basic or bottleneck body, Fixup's
scalars, SkipInit's scale), a stage, the stem, the head and the net. resexp.nets.build assembles
them from the spec table."""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from resexp.nets.spec import BOTTLENECK_EXPANSION, Design, Norm, Order, ShortcutOption, StageSpec

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, Enum):  # type: ignore[no-redef]
        def __str__(self) -> str:
            return str(self.value)


def conv(in_channels: int, out_channels: int, kernel: int, stride: int, design: Design) -> nn.Conv2d:
    """A convolution, with a per-channel bias only where the design has them (`Design.conv_bias`)."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=design.conv_bias)


def conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, design: Design = Design()
) -> list[nn.Module]:
    """A convolution and its batch norm, as in every layer of the paper (no bias: BN follows);
    without normalisation, a convolution with a bias."""
    layer = conv(in_channels, out_channels, kernel, stride, design)
    return [layer, nn.BatchNorm2d(out_channels)] if design.norm == Norm.batch else [layer]


def pre_activation(channels: int, design: Design) -> list[nn.Module]:
    """BN (when normalised) and ReLU: what a pre-activation layer applies before its conv."""
    return [*([nn.BatchNorm2d(channels)] if design.norm == Norm.batch else []), nn.ReLU(inplace=False)]


def pre_conv(in_channels: int, out_channels: int, kernel: int, stride: int, design: Design) -> list[nn.Module]:
    """A pre-activation layer (He et al. 2016): BN (when normalised) and ReLU, then the conv."""
    return [*pre_activation(in_channels, design), conv(in_channels, out_channels, kernel, stride, design)]


class Bias(nn.Module):
    """A learnable scalar added to its input (Fixup's biases)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Scale(nn.Module):
    """A learnable scalar its input is multiplied by (Fixup's multiplier, SkipInit's alpha)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class ZeroPadIdentity(nn.Module):
    """Option A: the identity, subsampled by `stride` and zero-padded to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


def projection(in_channels: int, out_channels: int, stride: int, design: Design = Design()) -> nn.Module:
    """Options B and C: a 1x1 conv + BN projection; in a pre-activation net a bare 1x1 conv, which
    reads the pre-activated input (He et al. 2016's code)."""
    if design.order == Order.pre:
        return nn.Sequential(conv(in_channels, out_channels, 1, stride, design))
    return nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride, design))


def changes_shape(in_channels: int, out_channels: int, stride: int) -> bool:
    return stride != 1 or in_channels != out_channels


def make_shortcut(
    option: str, in_channels: int, out_channels: int, stride: int, design: Design = Design()
) -> nn.Module:
    """The shortcut of one residual block under option A, B or C."""
    shape_changes = changes_shape(in_channels, out_channels, stride)
    if option == "C" or (option == "B" and shape_changes):
        return projection(in_channels, out_channels, stride, design)
    if option in ("A", "B"):
        return ZeroPadIdentity(in_channels, out_channels, stride) if shape_changes else nn.Identity()
    raise ValueError(f"model.shortcut={option!r} is unknown: valid options are {', '.join(ShortcutOption)}")


def branch(convs: list[tuple[int, int, int, int]], design: Design, preactivated: bool) -> nn.Sequential:
    """A residual branch of convs given as (in, out, kernel, stride): post-activation,
    conv-BN-ReLU ... conv-BN (Fig. 2, Fig. 5); pre-activation, BN-ReLU-conv each (the first
    BN-ReLU left out when the unit applies it before the split: `preactivated`); Fixup's with
    scalar biases and a multiplier (`fixup_body`)."""
    if design.fixup:
        return fixup_body(convs, design)
    layers: list[nn.Module] = []
    for i, (cin, cout, kernel, stride) in enumerate(convs):
        if design.order == Order.post:
            layers += conv_bn(cin, cout, kernel, stride, design)
            layers += [nn.ReLU(inplace=True)] if i < len(convs) - 1 else []
        elif i == 0 and preactivated:
            layers.append(conv(cin, cout, kernel, stride, design))
        else:
            layers += pre_conv(cin, cout, kernel, stride, design)
    return nn.Sequential(*layers)


def basic_body(
    in_channels: int, out_channels: int, stride: int, design: Design = Design(), preactivated: bool = False
) -> nn.Sequential:
    """conv3x3-BN-ReLU-conv3x3-BN (Fig. 2, Fig. 5 left); pre-activation: BN-ReLU-conv3x3 twice."""
    return branch([(in_channels, out_channels, 3, stride), (out_channels, out_channels, 3, 1)], design, preactivated)


def bottleneck_body(
    in_channels: int, out_channels: int, stride: int, design: Design = Design(), preactivated: bool = False
) -> nn.Sequential:
    """1x1 (reduce, with the stride) - 3x3 - 1x1 (restore), each with BN (Fig. 5 right); the
    stride in the first 1x1 in both orders (He et al. 2016's code strides there too)."""
    mid = out_channels // BOTTLENECK_EXPANSION
    convs = [(in_channels, mid, 1, stride), (mid, mid, 3, 1), (mid, out_channels, 1, 1)]
    return branch(convs, design, preactivated)


def fixup_body(convs: list[tuple[int, int, int, int]], design: Design) -> nn.Sequential:
    """A Fixup branch (Zhang et al. 2019): a scalar bias before each conv and after each but the
    last, a ReLU between them, and after the last conv a scalar multiplier and a scalar bias; the
    convolutions have no biases of their own."""
    layers: list[nn.Module] = []
    for i, (cin, cout, kernel, stride) in enumerate(convs):
        layers += [Bias(), conv(cin, cout, kernel, stride, design)]
        layers += [Bias(), nn.ReLU(inplace=True)] if i < len(convs) - 1 else [Scale(), Bias()]
    return nn.Sequential(*layers)


BODIES = {"basic": basic_body, "bottleneck": bottleneck_body}


class Block(nn.Module):
    """One block: relu(body(x) + shortcut(x)) when residual, relu(body(x)) when plain; a
    pre-activation block (`post_relu` False) adds last and applies nothing after, and one that
    changes the shape pre-activates x first (`preact`: BN-ReLU before the split)."""

    def __init__(
        self, body: nn.Module, shortcut: nn.Module | None, post_relu: bool = True, preact: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.preact = preact
        self.body = body
        self.shortcut = shortcut
        self.post_relu = post_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact is not None:
            x = self.preact(x)
        out = self.body(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out) if self.post_relu else out


def make_stage(
    block: str, in_channels: int, spec: StageSpec, mode: str, shortcut: str, design: Design = Design()
) -> nn.Sequential:
    """A stage of `spec.blocks` blocks; the first one carries the stride and the width change."""
    blocks = []
    for i in range(spec.blocks):
        stride = spec.stride if i == 0 else 1
        cin = in_channels if i == 0 else spec.width
        # He et al. 2016's code: a pre-activation unit that changes the shape pre-activates before the split
        shared = design.order == Order.pre and changes_shape(cin, spec.width, stride)
        body = BODIES[block](cin, spec.width, stride, design, preactivated=shared)
        if mode == "residual" and design.skip_scale:
            body.append(Scale(0.0))  # SkipInit: alpha * branch, alpha = 0 at first
        sc = make_shortcut(shortcut, cin, spec.width, stride, design) if mode == "residual" else None
        preact = nn.Sequential(*pre_activation(cin, design)) if shared else None
        blocks.append(Block(body, sc, post_relu=design.order == Order.post, preact=preact))
    return nn.Sequential(*blocks)


class Net(nn.Module):
    """stem -> stages -> head (global average pool + linear), for both families."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def make_stem(family: str, design: Design = Design()) -> tuple[nn.Module, int]:
    """The stem and its output width. A pre-activation CIFAR net's stem is its conv alone (the
    first block's BN-ReLU follows); Fixup's has no bias but a scalar one before its ReLU."""
    if family == "cifar":
        if design.order == Order.pre:
            return nn.Sequential(conv(3, 16, 3, 1, design)), 16
        if design.fixup:
            return nn.Sequential(conv(3, 16, 3, 1, design), Bias(), nn.ReLU(inplace=True)), 16
        return nn.Sequential(*conv_bn(3, 16, 3, 1, design), nn.ReLU(inplace=True)), 16
    layers = conv_bn(3, 64, 7, 2, design)
    if design.fixup:
        layers = [conv(3, 64, 7, 2, design), Bias()]
    stem = nn.Sequential(*layers, nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    return stem, 64


def make_head(width: int, num_classes: int, design: Design = Design()) -> nn.Module:
    """Pool and classify; a pre-activation net's final BN-ReLU first, Fixup's scalar bias before the classifier."""
    before = [*([nn.BatchNorm2d(width)] if design.norm == Norm.batch else []), nn.ReLU(inplace=False)]
    return nn.Sequential(
        *(before if design.order == Order.pre else []),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        *([Bias()] if design.fixup else []),
        nn.Linear(width, num_classes),
    )
