"""A network from its spec and design (`build_net`), or from a run's config (`build_model`), and
a checkpoint's tensors loaded into it (`load_weights`)."""

from __future__ import annotations

import torch
from torch import nn

from resexp.config import Config, ModelConfig
from resexp.errors import CheckpointError
from resexp.nets.blocks import Net, make_head, make_stage, make_stem
from resexp.nets.inits import initialise
from resexp.nets.spec import Design, Init, Mode, Norm, Order, ShortcutOption, design_change, net_spec


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


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The only function that turns config into a model."""
    m = cfg.model
    return build_net(m.family, m.depth, m.mode, m.shortcut, num_classes, m.norm, m.init, m.block, m.body)


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], m: ModelConfig, source: str) -> None:
    """Load a checkpoint's tensors into the net its config builds; a mismatch is one line, which
    says so when the design's build changed since the weights were made (models.DESIGN_CHANGES)."""
    try:
        model.load_state_dict(tensors)
    except RuntimeError:
        change = design_change({"init": m.init, "block": m.block})
        if change and set(tensors) != set(model.state_dict()):
            raise CheckpointError(
                f"{source} holds a net of an earlier resexp, whose design changed since ({change}): it cannot be "
                "loaded into the net resexp builds now; train it again (in a new folder, or after deleting this one)"
            ) from None
        raise CheckpointError(f"{source} does not fit the net its config describes") from None
