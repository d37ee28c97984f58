"""What a net costs: parameters and multiply-adds per image (the paper's Tables 1 and 6), and the
memory training needs, estimated from the spec table alone so that a net too large for the device
is refused before any module is built."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from resexp.nets.blocks import make_head, make_stage, make_stem
from resexp.nets.spec import (
    BOTTLENECK_EXPANSION,
    CIFAR_DEPTHS,
    IMAGENET_STAGES,
    Family,
    Mode,
    ShortcutOption,
    StageSpec,
    net_spec,
)


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
    family: str,
    depth: int,
    batch_size: int,
    image_size: int,
    num_classes: int,
    eval_batch_size: int = 0,
    body: str | None = None,
) -> tuple[int, int]:
    """(parameters, bytes) to train a net at a batch size, estimated from the spec table alone,
    without building a module: fp32 weights, gradients and momentum, plus the activations autograd
    keeps, about three per convolution (its output, the batch norm's, the ReLU's); or, if larger,
    an evaluation batch's widest layer. A lower bound within a factor of about two, used to
    refuse nets that cannot fit before any is built."""
    spec = net_spec(family, depth, body)
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
