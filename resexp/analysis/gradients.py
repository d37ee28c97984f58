"""Gradient flow: on one fixed batch of training images (the run's first batch, as training saw
it), the norm of the loss gradient with respect to each conv layer's weights (the stem's and each
block body's, by position) and with respect to each block's input, for each net at its
initialisation and at its checkpoint; BN in training mode, as in a training step.

Lectures blame the degradation problem on vanishing gradients; He et al. (Sec. 4.1) argue that
with BN "the backward propagated gradients exhibit healthy norms", so plain nets are not hard to
train because their gradients vanish. The verdict compares the first conv layer's gradient with
the last one's, per weight (RMS = norm / sqrt(weights), so layers of different sizes compare):
healthy within a factor of HEALTHY either way; below 1/HEALTHY the gradient vanishes toward the
input, above HEALTHY it explodes toward the input; a ratio that is not a finite positive number
(a last layer whose gradient is exactly zero, as under Fixup's zero-initialised branches) cannot
be judged. The claim is judged per state: at the checkpoint, and at initialisation.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resexp.analysis import Options, Result, colour_of, pyplot
from resexp.analysis.subjects import Subject
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED, Verdict, overall
from resexp.models import Block

HEALTHY = 100.0  # first / last conv layer RMS gradient within [1/100, 100]: healthy


def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    """The stem's convolution and each block body's, in forward order (shortcut projections left out)."""
    layers = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    for block in blocks(model):
        layers += [m for m in block.body.modules() if isinstance(m, nn.Conv2d)]
    return layers


def blocks(model: nn.Module) -> list[Block]:
    return [m for m in model.modules() if isinstance(m, Block)]


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    """Norms (and per-element RMS) of dloss/dweight for each conv layer and of dloss/dinput for
    each block, from one forward and backward pass of a copy of `model` (its BN statistics and
    weights stay as they are)."""
    net = copy.deepcopy(model).train()
    inputs: list[torch.Tensor] = []
    handles = [b.register_forward_pre_hook(lambda module, args: inputs.append(args[0])) for b in blocks(net)]
    try:
        loss = F.cross_entropy(net(x), y)
    finally:
        for handle in handles:
            handle.remove()
    weights = [conv.weight for conv in conv_layers(net)]
    grads = torch.autograd.grad(loss, weights + inputs)
    norms = [float(g.norm()) for g in grads]
    rms = [n / math.sqrt(g.numel()) for n, g in zip(norms, grads, strict=True)]
    k = len(weights)
    return {
        "weight_norm": norms[:k],
        "weight_rms": rms[:k],
        "input_norm": norms[k:],
        "input_rms": rms[k:],
        "loss": loss.item(),
    }


def analyze(nets: list[Subject], options: Options, base: Path, progress) -> Result:
    records = []
    for net in nets:
        progress(f"gradients: {net.name}")
        x, y = net.first_batch(options.images)
        states = [("init", net.initial_model())] + ([] if options.at_init else [("checkpoint", net.model)])
        for at, model in states:
            g = gradient_norms(model, x, y)
            ratio = g["weight_rms"][0] / g["weight_rms"][-1]
            records.append({**net.record(), "at": at, "images": len(y), "first_to_last": ratio, **g})
    columns = [
        "net",
        "seed",
        "at",
        "loss",
        "first / last conv gradient (RMS)",
        "smallest block-input gradient",
        "largest block-input gradient",
    ]
    rows = [
        [
            r["net"],
            str(r["seed"]),
            r["at"],
            f"{r['loss']:.3f}",
            f"{r['first_to_last']:.3g}",
            f"{min(r['input_norm']):.3g}",
            f"{max(r['input_norm']):.3g}",
        ]
        for r in records
    ]
    return Result("gradients", records, columns, rows, verdicts(records), figure(nets, records))


def flow(ratio: float) -> str:
    """How a gradient travels toward the input, from the first / last conv layer RMS ratio."""
    if not math.isfinite(ratio) or ratio <= 0:
        return "unmeasurable"
    if ratio > HEALTHY:
        return "explodes"
    if ratio < 1 / HEALTHY:
        return "vanishes"
    return "healthy"


def verdicts(records: list[dict]) -> list[Verdict]:
    """Sec. 4.1's claim per state (the checkpoint, initialisation): agrees when every net's
    gradient is healthy, does not agree when one vanishes or explodes, cannot decide when one
    cannot be measured and none contradicts."""
    out = []
    for at, when in (("checkpoint", "at the checkpoint"), ("init", "at initialisation")):
        mine = [r for r in records if r["at"] == at]
        if not mine:
            continue
        kinds = {id(r): flow(r["first_to_last"]) for r in mine}
        outcome = overall(
            AGREES if kinds[id(r)] == "healthy" else UNDECIDED if kinds[id(r)] == "unmeasurable" else DISAGREES
            for r in mine
        )
        per_net = "; ".join(f"{r['net']} s{r['seed']} {r['first_to_last']:.3g} ({kinds[id(r)]})" for r in mine)
        out.append(
            Verdict(
                f"with BN the gradients keep healthy norms, {when}",
                "He et al. 2015, Sec. 4.1",
                outcome,
                f"first / last conv layer gradient per weight: {per_net}; healthy = within a factor of "
                f"{HEALTHY:g} either way, below 1/{HEALTHY:g} vanishes, above {HEALTHY:g} explodes toward the input",
            )
        )
    return out


def figure(nets: list[Subject], records: list[dict]):
    plt = pyplot()
    colour = colour_of(nets)
    fig, (weights, inputs) = plt.subplots(1, 2, figsize=(12, 4.5))
    labelled = set()
    for r in records:
        style = dict(color=colour[r["net"]], ls="-" if r["at"] == "checkpoint" else ":", lw=1.4)
        label = f"{r['net']} ({r['at']})"
        style["label"] = None if label in labelled else label
        labelled.add(label)
        weights.plot(range(1, len(r["weight_norm"]) + 1), r["weight_norm"], **style)
        inputs.plot(range(1, len(r["input_norm"]) + 1), r["input_norm"], **style)
    weights.set(
        xlabel="conv layer (stem = 1)", ylabel="|dL/dW|", yscale="log", title="w.r.t. each conv layer's weights"
    )
    inputs.set(xlabel="block", ylabel="|dL/dx|", yscale="log", title="w.r.t. each block's input")
    for ax in (weights, inputs):
        ax.grid(alpha=0.3, which="both")
    weights.legend(fontsize=7)
    fig.suptitle("Gradient flow on one training batch (solid: checkpoint, dotted: initialisation)")
    fig.tight_layout()
    return fig
