"""Plain and residual networks of He et al. 2015, "Deep Residual Learning for Image Recognition".

One spec table per family and one stage builder serve every depth:

- CIFAR (Sec. 4.2): a 3x3 conv stem of width 16, three stages of n basic blocks with widths
  16/32/64 (stride 2 at the first block of stages 2 and 3), global average pooling, a linear
  head; depth = 6n + 2. Option A parameter counts with a 10-way head: ResNet-20 0.27M,
  -32 0.46M, -44 0.66M, -56 0.85M, -110 1.7M, -1202 19.4M.
- ImageNet (Sec. 3.4, Table 1): a 7x7/2 conv stem of width 64 and a 3x3/2 max-pool, four stages
  of basic blocks (18, 34) or bottleneck blocks (50, 101, 152) with widths 64/128/256/512
  (x4 at the output of a bottleneck), global average pooling, a linear head. With option B the
  residual nets have exactly torchvision's resnet18/34/50 parameter counts. As in the paper
  (and unlike torchvision's "v1.5"), a bottleneck block downsamples in its first 1x1 conv.

Plain vs residual is one switch: a block's `shortcut` is None in a plain net, and the block
then simply skips the addition. Shortcut options carry the paper's names (Sec. 3.3, 4.1):
A zero-pads the identity where the shape changes (no parameters), B projects (1x1 conv + BN)
only where the shape changes, C projects in every block.
"""

from __future__ import annotations

import functools
import math
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
BOTTLENECK_EXPANSION = 4


def valid_depths(family: str) -> str:
    """A human-readable list of the depths a family accepts, for error messages."""
    if family == "cifar":
        return "6n+2 for n >= 1, e.g. " + ", ".join(map(str, (8, 14) + CIFAR_DEPTHS))
    return ", ".join(map(str, IMAGENET_STAGES))


def net_spec(family: str, depth: int) -> NetSpec:
    """The stage table for one family and depth; raises ValueError listing valid depths."""
    if family == "cifar":
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"model.depth={depth} is not a CIFAR depth: valid depths are {valid_depths('cifar')}")
        n = (depth - 2) // 6
        stages = (StageSpec(n, 16, 1), StageSpec(n, 32, 2), StageSpec(n, 64, 2))
        return NetSpec("cifar", depth, "basic", stages)
    if family == "imagenet":
        if depth not in IMAGENET_STAGES:
            raise ValueError(
                f"model.depth={depth} is not an ImageNet depth: valid depths are {valid_depths('imagenet')}"
            )
        block, blocks = IMAGENET_STAGES[depth]
        expansion = BOTTLENECK_EXPANSION if block == "bottleneck" else 1
        stages = tuple(StageSpec(b, 64 * 2**i * expansion, 1 if i == 0 else 2) for i, b in enumerate(blocks))
        return NetSpec("imagenet", depth, block, stages)
    raise ValueError(f"model.family={family!r} is unknown: valid families are cifar, imagenet")


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """A convolution (no bias: BN follows) and its batch norm, as in every layer of the paper."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_channels)]


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


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Options B and C: a 1x1 conv + BN projection."""
    return nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The shortcut of one residual block under option A, B or C."""
    shape_changes = stride != 1 or in_channels != out_channels
    if option == "C" or (option == "B" and shape_changes):
        return projection(in_channels, out_channels, stride)
    if option in ("A", "B"):
        return ZeroPadIdentity(in_channels, out_channels, stride) if shape_changes else nn.Identity()
    raise ValueError(f"model.shortcut={option!r} is unknown: valid options are {', '.join(ShortcutOption)}")


def basic_body(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """conv3x3-BN-ReLU-conv3x3-BN (Fig. 2, Fig. 5 left)."""
    return nn.Sequential(
        *conv_bn(in_channels, out_channels, 3, stride), nn.ReLU(inplace=True), *conv_bn(out_channels, out_channels, 3)
    )


def bottleneck_body(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 (reduce, with the stride) - 3x3 - 1x1 (restore), each with BN (Fig. 5 right)."""
    mid = out_channels // BOTTLENECK_EXPANSION
    return nn.Sequential(
        *conv_bn(in_channels, mid, 1, stride),
        nn.ReLU(inplace=True),
        *conv_bn(mid, mid, 3),
        nn.ReLU(inplace=True),
        *conv_bn(mid, out_channels, 1),
    )


BODIES = {"basic": basic_body, "bottleneck": bottleneck_body}


class Block(nn.Module):
    """One block: relu(body(x) + shortcut(x)) when residual, relu(body(x)) when plain."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


def make_stage(block: str, in_channels: int, spec: StageSpec, mode: str, shortcut: str) -> nn.Sequential:
    """A stage of `spec.blocks` blocks; the first one carries the stride and the width change."""
    blocks = []
    for i in range(spec.blocks):
        stride = spec.stride if i == 0 else 1
        cin = in_channels if i == 0 else spec.width
        sc = make_shortcut(shortcut, cin, spec.width, stride) if mode == "residual" else None
        blocks.append(Block(BODIES[block](cin, spec.width, stride), sc))
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


def make_stem(family: str) -> tuple[nn.Module, int]:
    """The stem and its output width."""
    if family == "cifar":
        return nn.Sequential(*conv_bn(3, 16, 3), nn.ReLU(inplace=True)), 16
    stem = nn.Sequential(*conv_bn(3, 64, 7, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    return stem, 64


def make_head(width: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def he_init(net: nn.Module) -> None:
    """He et al. 2015 ("Delving deep") normal init for convs; BN starts as the identity."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_net(family: str, depth: int, mode: str, shortcut: str, num_classes: int) -> Net:
    """The network for one row of the spec table. `shortcut` is ignored when `mode` is plain."""
    if mode not in list(Mode):
        raise ValueError(f"model.mode={mode!r} is unknown: valid modes are {', '.join(Mode)}")
    if shortcut not in list(ShortcutOption):
        raise ValueError(f"model.shortcut={shortcut!r} is unknown: valid options are {', '.join(ShortcutOption)}")
    spec = net_spec(family, depth)
    stem, width = make_stem(family)
    stages = []
    for stage in spec.stages:
        stages.append(make_stage(spec.block, width, stage, mode, shortcut))
        width = stage.width
    net = Net(stem, nn.Sequential(*stages), make_head(width, num_classes))
    he_init(net)
    return net


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_macs(net: nn.Module, image_size: int) -> int:
    """Multiply-adds of one forward pass on one image: convolutions and the linear head, as in
    the paper's FLOP figures (torch's FlopCounterMode counts 2 FLOPs per multiply-add; batch norm,
    ReLU and additions are not counted). A net built on the meta device costs no memory and no
    arithmetic."""
    x = torch.empty(1, 3, image_size, image_size, device=next(net.parameters()).device)
    was_training = net.training
    try:
        return block_macs(net, x)
    finally:
        net.train(was_training)


FAMILY_IMAGE_SIZE = {Family.cifar: 32, Family.imagenet: 224}


def cost(family: str, depth: int, mode: str, shortcut: str, num_classes: int) -> tuple[int, int]:
    """(parameters, multiply-adds per image) of one variant. The blocks after the first of a
    stage are all alike, and blocks recur across depths, so each distinct block is counted once
    (on the meta device) and multiplied by its repeats: all 44 standard variants take a second."""
    spec = net_spec(family, depth)
    size = FAMILY_IMAGE_SIZE[Family(family)]
    with torch.device("meta"):
        stem, width = make_stem(family)
        x = stem(torch.empty(1, 3, size, size))
        params, macs = count_params(stem), block_macs(stem, torch.empty(1, 3, size, size))
        side = x.shape[-1]
        for stage in spec.stages:
            first = block_cost(spec.block, width, stage.width, stage.stride, mode, shortcut, side)
            side = math.ceil(side / stage.stride)
            rest = block_cost(spec.block, stage.width, stage.width, 1, mode, shortcut, side)
            params += first[0] + (stage.blocks - 1) * rest[0]
            macs += first[1] + (stage.blocks - 1) * rest[1]
            width = stage.width
        head = make_head(width, num_classes)
        params, macs = params + count_params(head), macs + block_macs(head, torch.empty(1, width, side, side))
    return params, macs


@functools.cache
def block_cost(block: str, cin: int, width: int, stride: int, mode: str, shortcut: str, side: int) -> tuple[int, int]:
    """(parameters, multiply-adds) of one block on a (cin, side, side) input."""
    with torch.device("meta"):
        [module] = make_stage(block, cin, StageSpec(1, width, stride), mode, shortcut)
        return count_params(module), block_macs(module, torch.empty(1, cin, side, side))


def block_macs(module: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.eval()(x)
    return counter.get_total_flops() // 2


def variant_rows(num_classes: dict[str, int] | None = None) -> list[dict]:
    """Parameters and multiply-adds of the standard variants: CIFAR 20..1202 and ImageNet 18..152,
    plain (no shortcut, so no option) and residual under each option."""
    num_classes = num_classes or {Family.cifar: 10, Family.imagenet: 1000}
    rows = []
    for family, depths in ((Family.cifar, CIFAR_DEPTHS), (Family.imagenet, tuple(IMAGENET_STAGES))):
        for depth in depths:
            for mode, options in ((Mode.plain, ("-",)), (Mode.residual, tuple(ShortcutOption))):
                for option in options:
                    params, macs = cost(family, depth, mode, "A" if option == "-" else option, num_classes[family])
                    rows.append(
                        {
                            "family": str(family),
                            "depth": depth,
                            "mode": str(mode),
                            "shortcut": str(option),
                            "params": params,
                            "macs": macs,
                        }
                    )
    return rows


def training_memory(
    family: str, depth: int, batch_size: int, image_size: int, num_classes: int, eval_batch_size: int = 0
) -> tuple[int, int]:
    """(parameters, bytes) to train a net at a batch size, estimated from the spec table alone,
    without building a module: fp32 weights, gradients and momentum, plus the activations autograd
    keeps, about three per convolution (its output, the batch norm's, the ReLU's); or, if larger,
    an evaluation batch's widest layer. A lower bound within a factor of about two, used to
    refuse nets that cannot fit before any is built."""
    spec = net_spec(family, depth)
    side = math.ceil(image_size / 4) if family == Family.imagenet else image_size  # stem stride and max-pool
    width = 64 if family == Family.imagenet else 16
    params, values = 3 * width * (49 if family == Family.imagenet else 9), width * side * side
    widest = 4 * values if family == Family.imagenet else values  # the stem's output, before the max-pool
    expansion = BOTTLENECK_EXPANSION if spec.block == "bottleneck" else 1
    for stage in spec.stages:
        side = math.ceil(side / stage.stride)
        mid = stage.width // expansion
        for cin, count in ((width, 1), (stage.width, stage.blocks - 1)):
            if spec.block == "basic":
                block_params, block_values = 9 * (cin + stage.width) * stage.width, 2 * stage.width
            else:
                block_params, block_values = (cin + 9 * mid + stage.width) * mid, 2 * mid + stage.width
            params += count * block_params
            values += count * block_values * side * side
        widest = max(widest, stage.width * side * side)
        width = stage.width
    params += width * num_classes
    return params, 4 * max(4 * params + 3 * batch_size * values, params + 3 * eval_batch_size * widest)
