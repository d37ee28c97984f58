"""The spec table of the paper's networks: the families, the depths each has, and the stages of
blocks a depth means (CIFAR 6n+2 of basic blocks, 9n+2 of bottlenecks; ImageNet 18/34/50/101/152,
Table 1), with the names of every switch (mode, shortcut option, norm, init, block order, body)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

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
