"""Plain and residual networks of He et al. 2015, "Deep Residual Learning for Image Recognition",
and the counterfactual designs that ask why they train.

One spec table per family and one stage builder serve every depth:

- CIFAR (Sec. 4.2): a 3x3 conv stem of width 16, three stages of n basic blocks with widths
  16/32/64 (stride 2 at the first block of stages 2 and 3), global average pooling, a linear
  head; depth = 6n + 2. Option A parameter counts with a 10-way head: ResNet-20 0.27M,
  -32 0.46M, -44 0.66M, -56 0.85M, -110 1.7M, -1202 19.4M. With bottleneck blocks (`body`,
  He et al. 2016's deepest CIFAR nets) depth = 9n + 2 and stages of widths 64/128/256 (16/32/64
  inside each block): pre-activation ResNet-164 1.7M, ResNet-1001 10.2M.
- ImageNet (Sec. 3.4, Table 1): a 7x7/2 conv stem of width 64 and a 3x3/2 max-pool, four stages
  of basic blocks (18, 34) or bottleneck blocks (50, 101, 152) with widths 64/128/256/512
  (x4 at the output of a bottleneck), global average pooling, a linear head. With option B the
  residual nets have exactly torchvision's resnet18/34/50 parameter counts. As in the paper
  (and unlike torchvision's "v1.5"), a bottleneck block downsamples in its first 1x1 conv.

Plain vs residual is one switch: a block's `shortcut` is None in a plain net, and the block
then simply skips the addition. Shortcut options carry the paper's names (Sec. 3.3, 4.1):
A zero-pads the identity where the shape changes (no parameters), B projects (1x1 conv + BN)
only where the shape changes, C projects in every block.

The counterfactuals, each one switch (the defaults build the 2015 nets, module for module):
- `norm`: `batch` (BN after every conv, the paper's) or `none` (no normalisation; every conv
  has a bias).
- `block`: `post` (the 2015 block: conv-BN-ReLU-conv-BN, add, ReLU) or `pre` (full
  pre-activation, He, Zhang, Ren and Sun 2016, "Identity Mappings in Deep Residual Networks":
  BN-ReLU-conv twice, the addition last and nothing after it, so the identity path runs clean
  from the stem to a final BN-ReLU before pooling). As the paper's code builds it
  (KaimingHe/resnet-1k-layers, resnet-pre-act.lua): a unit that changes the shape applies its
  BN-ReLU before the split, so that its shortcut reads the pre-activated input; its projection is
  a bare 1x1 conv (no BN after it); a pre-activation bottleneck strides in its first 1x1 conv.
  Where resexp departs from that code: the ImageNet stem keeps its BN-ReLU (conv-BN-ReLU-max-pool),
  and option A (a zero-padded identity) may be chosen for a pre-activation net, which that code
  never does.
- `init` (resexp.inits): He, Xavier (Glorot normal), zero-gamma, SkipInit or Fixup.
- Fixup (Zhang, Dauphin and Ma 2019) has no normalisation and no per-channel biases in its
  branches: scalar biases and a scalar multiplier only (`fixup_body`), as that paper builds it.

`DESIGN_CHANGES` names the designs whose build changed since runs were made with them, so that
loading such a run's weights says why it cannot be loaded, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, Enum):  # type: ignore[no-redef]
        def __str__(self) -> str:
            return str(self.value)


class Family(StrEnum):
    cifar = "cifar"
    imagenet = "imagenet"


class Mode(StrEnum):
    plain = "plain"
    residual = "residual"


class ShortcutOption(StrEnum):
    A = "A"  # zero-padded identity where the shape changes; no parameters
    B = "B"  # 1x1 conv + BN projection where the shape changes, identity elsewhere
    C = "C"  # projection in every block


class Norm(StrEnum):
    batch = "batch"  # BN after every conv (the paper's)
    none = "none"  # no normalisation: every conv has a bias (Fixup's branches: scalar biases instead)


class Init(StrEnum):
    he = "he"  # He et al. 2015b, "Delving deep into rectifiers" (the paper's)
    xavier = "xavier"  # Glorot normal (Glorot and Bengio 2010): what deep nets used before 2015
    zero_gamma = "zero_gamma"  # Goyal et al. 2017: the last BN scale of each residual branch at zero
    skipinit = "skipinit"  # De and Smith 2020: each residual branch times a learnable scalar, at zero
    fixup = "fixup"  # Zhang, Dauphin and Ma 2019: rescaled branches, last layers at zero, no normalisation


class Order(StrEnum):
    post = "post"  # the 2015 block: the activation after the addition
    pre = "pre"  # full pre-activation (He et al. 2016): BN-ReLU before each conv, nothing after the addition


class Body(StrEnum):
    basic = "basic"  # two 3x3 convs
    bottleneck = "bottleneck"  # 1x1 (reduce) - 3x3 - 1x1 (restore)


@dataclass(frozen=True)
class Design:
    """How a block is built: the counterfactual switches (the defaults are the 2015 nets)."""

    norm: str = Norm.batch
    order: str = Order.post
    fixup: bool = False  # scalar biases and a scalar multiplier around each branch's layers (Fixup)
    skip_scale: bool = False  # each residual branch times a learnable scalar (SkipInit)

    @property
    def conv_bias(self) -> bool:
        """Whether convolutions carry per-channel biases: without normalisation, except Fixup's
        (its scalar biases take their place)."""
        return self.norm == Norm.none and not self.fixup


@dataclass(frozen=True)
class StageSpec:
    blocks: int
    width: int  # output channels of each block in the stage
    stride: int  # stride of the stage's first block


@dataclass(frozen=True)
class NetSpec:
    family: str
    depth: int
    block: str  # "basic" or "bottleneck"
    stages: tuple[StageSpec, ...]


# ImageNet depth -> (block, blocks per stage); Table 1 of the paper.
IMAGENET_STAGES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110, 1202)  # the depths the paper trains
CIFAR_BOTTLENECK_DEPTHS: tuple[int, ...] = (164, 1001)  # He et al. 2016's
BOTTLENECK_EXPANSION = 4


def valid_depths(family: str, body: str | None = None) -> str:
    """A human-readable list of the depths a family accepts, for error messages."""
    if family == "cifar" and body == Body.bottleneck:
        return "9n+2 for n >= 1 with model.body=bottleneck, e.g. 11, 29, " + ", ".join(
            map(str, CIFAR_BOTTLENECK_DEPTHS)
        )
    if family == "cifar":
        return "6n+2 for n >= 1, e.g. " + ", ".join(map(str, (8, 14) + CIFAR_DEPTHS))
    return ", ".join(map(str, IMAGENET_STAGES))


def net_spec(family: str, depth: int, body: str | None = None) -> NetSpec:
    """The stage table for one family, depth and block body (None: the family's own, basic for
    CIFAR); raises ValueError listing valid depths."""
    if family == "cifar":
        bottleneck = body == Body.bottleneck
        per_block = 3 if bottleneck else 2
        if depth < 3 * per_block + 2 or (depth - 2) % (3 * per_block) != 0:
            raise ValueError(
                f"model.depth={depth} is not a CIFAR depth: valid depths are {valid_depths('cifar', body)}"
            )
        n = (depth - 2) // (3 * per_block)
        expansion = BOTTLENECK_EXPANSION if bottleneck else 1
        stages = tuple(StageSpec(n, w * expansion, s) for w, s in ((16, 1), (32, 2), (64, 2)))
        return NetSpec("cifar", depth, "bottleneck" if bottleneck else "basic", stages)
    if family == "imagenet":
        if depth not in IMAGENET_STAGES:
            raise ValueError(
                f"model.depth={depth} is not an ImageNet depth: valid depths are {valid_depths('imagenet')}"
            )
        block, blocks = IMAGENET_STAGES[depth]
        if body is not None and body != block:
            raise ValueError(
                f"model.body={body} does not fit ImageNet depth {depth}: Table 1 builds it of {block} blocks "
                "(leave model.body out)"
            )
        expansion = BOTTLENECK_EXPANSION if block == "bottleneck" else 1
        stages = tuple(StageSpec(b, 64 * 2**i * expansion, 1 if i == 0 else 2) for i, b in enumerate(blocks))
        return NetSpec("imagenet", depth, block, stages)
    raise ValueError(f"model.family={family!r} is unknown: valid families are cifar, imagenet")


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


def build_net(
    family: str,
    depth: int,
    mode: str,
    shortcut: str,
    num_classes: int,
    norm: str = Norm.batch,
    init: str = Init.he,
    block: str = Order.post,
    body: str | None = None,
) -> Net:
    """The network for one row of the spec table, built and initialised as `norm`, `init`,
    `block` and `body` say. `shortcut` is ignored when `mode` is plain. resexp.config refuses the
    combinations that make no sense (Fixup with BN, ...) before anything is built."""
    from resexp.inits import initialise

    if mode not in list(Mode):
        raise ValueError(f"model.mode={mode!r} is unknown: valid modes are {', '.join(Mode)}")
    if shortcut not in list(ShortcutOption):
        raise ValueError(f"model.shortcut={shortcut!r} is unknown: valid options are {', '.join(ShortcutOption)}")
    spec = net_spec(family, depth, body)
    design = Design(norm, block, fixup=init == Init.fixup, skip_scale=init == Init.skipinit)
    stem, width = make_stem(family, design)
    stages = []
    for stage in spec.stages:
        stages.append(make_stage(spec.block, width, stage, mode, shortcut, design))
        width = stage.width
    net = Net(stem, nn.Sequential(*stages), make_head(width, num_classes, design))
    initialise(net, init, branches=sum(s.blocks for s in spec.stages), layers=3 if spec.block == "bottleneck" else 2)
    return net


# Designs whose build changed after runs were made with them: (model field, value, what changed).
# A checkpoint of such a run no longer fits the net its config builds; loading it says this.
DESIGN_CHANGES: tuple[tuple[str, str, str], ...] = (
    (
        "init",
        Init.fixup,
        "Fixup's branch convolutions had per-channel biases, and now have the paper's scalar biases only",
    ),
    (
        "block",
        Order.pre,
        "pre-activation units that change the shape now pre-activate before the split (a bare 1x1 projection) "
        "and a pre-activation bottleneck strides in its first 1x1, as He et al. 2016's code builds them",
    ),
)


def design_change(fields: dict[str, object]) -> str | None:
    """What changed in the build of the design `fields` (model fields by their short names: init,
    block) since earlier runs were made with it; None when its build never changed."""
    changes = [what for key, value, what in DESIGN_CHANGES if str(fields.get(key)) == str(value)]
    return "; ".join(changes) or None


def fixup_scale(branches: int, layers: int) -> float:
    """Fixup's factor for the layers of a branch: L^(-1/(2m-2)), L branches of m layers each."""
    return branches ** (-1.0 / (2 * layers - 2)) if branches > 0 else 1.0
