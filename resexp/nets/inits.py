"""How a net's weights start (`model.init`): the paper's choice and the counterfactuals that tell
the lectures' explanations of residual learning apart.

- `he` (the paper's; He, Zhang, Ren and Sun 2015b, "Delving Deep into Rectifiers"): each conv
  normal with variance 2 / fan-out, which keeps a ReLU net's signal at its scale layer after
  layer; BN as the identity (scale 1, shift 0); conv biases (without BN) 0.
- `xavier` (Glorot normal: Glorot and Bengio 2010, what deep nets used before 2015): each conv and
  the classifier normal with variance 2 / (fan-in + fan-out), not Glorot's uniform variant. In a
  ReLU net without normalisation it halves the signal's variance per layer: the textbook vanishing
  signal and gradient.
- `zero_gamma` (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): He, and the scale of the last
  BN of each residual branch 0, so that every residual block starts as its shortcut; for the 2015
  block only (a pre-activation branch's last BN is followed by a ReLU, through which a zero scale
  would pass no gradient: resexp.config refuses the pair).
- `skipinit` (De and Smith 2020, "Batch Normalization Biases Residual Blocks Towards the Identity
  Function in Deep Networks"): He, and each residual branch multiplied by a learnable scalar that
  starts at 0 (resexp.nets.blocks.Scale at the end of the branch); meant for nets without BN.
- `fixup` (Zhang, Dauphin and Ma 2019, "Fixup Initialization: Residual Learning Without
  Normalization"): no normalisation; scalar biases around each layer of a branch and a scalar
  multiplier at its end, and no per-channel conv biases (resexp.nets.blocks.fixup_body); the layers of
  each of the L branches of m layers He-initialised and scaled by L^(-1/(2m-2)), the last layer of
  each branch and the classifier 0.

zero_gamma, skipinit and fixup make every residual block that keeps its input's shape exactly the
identity at first (the net's output equals that of the net with those blocks removed).
"""

from __future__ import annotations

from torch import nn

from resexp.nets.blocks import Block
from resexp.nets.spec import Init


def initialise(net: nn.Module, init: str, branches: int, layers: int) -> None:
    """Set `net`'s weights as `init` says; `branches` residual branches of `layers` layers each
    (Fixup's L and m)."""
    if init == Init.xavier:
        xavier_init(net)
        return
    he_init(net)
    if init == Init.zero_gamma:
        for block in residual_blocks(net):
            [*_, last] = (m for m in block.body.modules() if isinstance(m, nn.BatchNorm2d))
            nn.init.zeros_(last.weight)
    elif init == Init.fixup:
        factor = fixup_scale(branches, layers)
        for block in residual_blocks(net):
            *first, last = (m for m in block.body.modules() if isinstance(m, nn.Conv2d))
            for conv in first:
                conv.weight.data.mul_(factor)
            nn.init.zeros_(last.weight)
        classifier = net.head[-1]
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)
    elif init not in (Init.he, Init.skipinit):  # skipinit: its scalars start at 0 where they are built
        raise ValueError(f"model.init={init!r} is unknown: valid choices are {', '.join(Init)}")


def residual_blocks(net: nn.Module) -> list[Block]:
    return [m for m in net.modules() if isinstance(m, Block) and m.shortcut is not None]


def he_init(net: nn.Module) -> None:
    """He et al. 2015b normal init for convs; BN starts as the identity; conv biases at 0."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def xavier_init(net: nn.Module) -> None:
    """Glorot normal init for every conv and the classifier; BN as the identity; biases at 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def fixup_scale(branches: int, layers: int) -> float:
    """Fixup's factor for the layers of a branch: L^(-1/(2m-2)), L branches of m layers each."""
    return branches ** (-1.0 / (2 * layers - 2)) if branches > 0 else 1.0
