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

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Family = Literal["cifar", "imagenet"]
Mode = Literal["plain", "residual"]
Shortcut = Literal["A", "B", "C"]
MODES: tuple[str, ...] = ("plain", "residual")
SHORTCUTS: tuple[str, ...] = ("A", "B", "C")


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
        stages = tuple(
            StageSpec(b, 64 * 2**i * expansion, 1 if i == 0 else 2) for i, b in enumerate(blocks)
        )
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
    raise ValueError(f"model.shortcut={option!r} is unknown: valid options are {', '.join(SHORTCUTS)}")


def basic_body(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """conv3x3-BN-ReLU-conv3x3-BN (Fig. 2, Fig. 5 left)."""
    return nn.Sequential(
        *conv_bn(in_channels, out_channels, 3, stride), nn.ReLU(inplace=True), *conv_bn(out_channels, out_channels, 3)
    )


def bottleneck_body(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 (reduce, with the stride) - 3x3 - 1x1 (restore), each with BN (Fig. 5 right)."""
    mid = out_channels // BOTTLENECK_EXPANSION
    return nn.Sequential(
        *conv_bn(in_channels, mid, 1, stride), nn.ReLU(inplace=True),
        *conv_bn(mid, mid, 3), nn.ReLU(inplace=True),
        *conv_bn(mid, out_channels, 1),
    )  # fmt: skip


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
    if mode not in MODES:
        raise ValueError(f"model.mode={mode!r} is unknown: valid modes are {', '.join(MODES)}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"model.shortcut={shortcut!r} is unknown: valid options are {', '.join(SHORTCUTS)}")
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
    """Multiply-adds of one forward pass on one image (convs and the linear head; BN, ReLU and
    additions not counted, as in the paper's FLOP figures). Runs on the meta device: no memory."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = module.in_channels // module.groups * kh * kw
            macs += output.shape[1] * output.shape[2] * output.shape[3] * per_output
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = net.training
    net.eval()  # eval-mode batch norm is several times cheaper on the meta device
    try:
        with torch.no_grad():
            net(torch.empty(1, 3, image_size, image_size, device=next(net.parameters()).device))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return macs


FAMILY_IMAGE_SIZE = {"cifar": 32, "imagenet": 224}


def variant_rows(num_classes: dict[str, int] | None = None) -> list[dict]:
    """Parameters and multiply-adds of the standard variants: CIFAR 20..1202 and ImageNet 18..152,
    plain (no shortcut, so no option) and residual under each option."""
    num_classes = num_classes or {"cifar": 10, "imagenet": 1000}
    rows = []
    for family, depths in (("cifar", CIFAR_DEPTHS), ("imagenet", tuple(IMAGENET_STAGES))):
        for depth in depths:
            for mode, options in (("plain", ("-",)), ("residual", SHORTCUTS)):
                for option in options:
                    with torch.device("meta"):
                        net = build_net(family, depth, mode, "A" if option == "-" else option, num_classes[family])
                    rows.append(
                        {
                            "family": family,
                            "depth": depth,
                            "mode": mode,
                            "shortcut": option,
                            "params": count_params(net),
                            "macs": count_macs(net, FAMILY_IMAGE_SIZE[family]),
                        }
                    )
    return rows
