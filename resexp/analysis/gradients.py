"""Gradient flow: on one fixed batch of training images (the run's first batch, as training saw
it), the norm of the loss gradient with respect to each conv layer's weights (the stem's and each
block body's, by position) and with respect to each block's input, for each net at its
initialisation and at its checkpoint; BN in training mode, as in a training step.

Lectures blame the degradation problem on vanishing gradients; He et al. (Sec. 4.1) argue that
with BN "the backward propagated gradients exhibit healthy norms", so plain nets are not hard to
train because their gradients vanish. The gradient of each net is judged on its scale and on how
it changes toward the input, in this order:

- no gradient: every conv layer's weight gradient is exactly zero (Fixup's classifier starts at
  zero, so nothing reaches the stream at initialisation): cannot be judged;
- exploded: some layer's update size lr * |g| / |w| (lr: the run's base lr) is above EXPLODED (one
  step would move it by more than its own norm), or the loss is not finite;
- vanished in every layer: every conv layer's update size is below VANISHED, a hundred times below
  the rule of thumb for a healthy SGD step (about 1e-3: CS231n's "ratio of the updates to the
  values"). A ratio between layers cannot see this: when every layer's gradient is 1e-20, the
  first over the last is about 1. A trained net's gradient is small because its loss is, and it
  stays far above this (akamaster's ResNet-56 at loss 0.002: 2e-4 at lr 0.1);
- otherwise the first conv layer's gradient over the last one's, per weight (RMS = norm /
  sqrt(weights), so layers of different sizes compare): healthy within a factor of HEALTHY either
  way, below 1/HEALTHY it vanishes toward the input, above HEALTHY it explodes toward the input; a
  last layer whose gradient is exactly zero cannot be judged.

The claim is judged per design (norm, init, block, body: "with BN" is judged on the BN nets; the
same measure on nets without BN is shown as what it is, not as He et al.'s claim) and per state
(at the checkpoint, at initialisation). At initialisation, nets whose residual branches start at
zero (zero_gamma, SkipInit, Fixup) pass the gradient through their shortcuts by construction, and
their verdicts say so.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resexp.analysis.protocol import Options, colour_of, pyplot
from resexp.analysis.subjects import Subject
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED, Verdict, design_tag, design_text, judged_on, overall
from resexp.nets.blocks import Block

HEALTHY = 100.0  # first / last conv layer RMS gradient within [1/100, 100]: healthy
VANISHED = 1e-5  # every layer's update size lr * |g| / |w| below this: the gradient has vanished everywhere
EXPLODED = 1.0  # some layer's update size above this: one step moves it by more than its own norm
ZERO_START = {"zero_gamma", "skipinit", "fixup"}  # inits that start every residual branch at zero
BN_CLAIM = "with BN the gradients keep healthy norms"


def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    """The stem's convolution and each block body's, in forward order (shortcut projections left out)."""
    layers = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    for block in blocks(model):
        layers += [m for m in block.body.modules() if isinstance(m, nn.Conv2d)]
    return layers


def blocks(model: nn.Module) -> list[Block]:
    return [m for m in model.modules() if isinstance(m, Block)]


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, list[float] | float]:
    """Norms (and per-element RMS) of dloss/dweight for each conv layer, each layer's update size
    lr * |g| / |w|, and dloss/dinput for each block, from one forward and backward pass of a copy
    of `model` (its BN statistics and weights stay as they are)."""
    net = copy.deepcopy(model).train()
    inputs: list[torch.Tensor] = []
    handles = [b.register_forward_pre_hook(lambda module, args: inputs.append(args[0])) for b in blocks(net)]
    try:
        loss = F.cross_entropy(net(x), y)
    finally:
        for handle in handles:
            handle.remove()
    weights = [conv.weight for conv in conv_layers(net)]
    grads = torch.autograd.grad(loss, weights + inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, weights + inputs, strict=True)]
    norms = [float(g.float().norm()) for g in grads]
    rms = [n / math.sqrt(g.numel()) for n, g in zip(norms, grads, strict=True)]
    k = len(weights)
    sizes = [float(w.detach().float().norm()) for w in weights]
    update = [lr * n / s if s > 0 else (0.0 if n == 0 else math.inf) for n, s in zip(norms[:k], sizes, strict=True)]
    return {
        "weight_norm": norms[:k],
        "weight_rms": rms[:k],
        "update": update,
        "input_norm": norms[k:],
        "input_rms": rms[k:],
        "loss": loss.item(),
    }


def ratio(first: float, last: float) -> float:
    """first / last, NaN where it is not a number (a zero last layer: `flow` says why)."""
    if last > 0 and math.isfinite(first) and math.isfinite(last):
        return first / last
    return math.nan


COLUMNS = ["net", "seed", "at", "loss", "first / last conv gradient (RMS)", "largest update size", "flow"]


def measure(net: Subject, options: Options, base: Path, progress) -> list[dict]:
    """At initialisation, and (unless --at-init) at the checkpoint."""
    progress(f"gradients: {net.name}")
    x, y = net.first_batch(options.images)
    states = [("init", net.initial())] + ([] if options.at_init else [("checkpoint", net)])
    return [
        measured({**s.record(), "at": at, "images": len(y)}, gradient_norms(s.model, x, y, s.cfg.optim.lr))
        for at, s in states
    ]


def rows(records: list[dict]) -> list[list[str]]:
    return [
        [
            r["net"],
            str(r["seed"]),
            r["at"],
            f"{r['loss']:.3g}",
            "-" if r["first_to_last"] is None or math.isnan(r["first_to_last"]) else f"{r['first_to_last']:.3g}",
            f"{max(r['update'], default=0.0):.3g}",
            r["flow"],
        ]
        for r in records
    ]


def measured(meta: dict, g: dict) -> dict:
    """One net's record: what it is (`meta`: net, seed, mode, design, training, at), its gradient
    norms, and how its gradient flows."""
    record = {**meta, "first_to_last": ratio(g["weight_rms"][0], g["weight_rms"][-1]), **g}
    record["flow"], record["flow_why"] = flow(record)
    return record


def flow(record: dict) -> tuple[str, str]:
    """How a net's gradient travels, and the numbers that say so: no gradient, vanished,
    exploded, or toward the input from the first / last conv layer RMS ratio (vanishes, explodes,
    healthy); unmeasurable where a ratio cannot be taken."""
    largest, loss, r = max(record["update"], default=0.0), record["loss"], record["first_to_last"]
    r = math.nan if r is None else r  # NaN comes back from JSON as null
    numbers = f"first / last conv layer {r:.3g}, largest update size {largest:.3g}, loss {loss:.3g}"
    if not math.isfinite(loss) or largest > EXPLODED:
        return "exploded", numbers
    if not any(record["weight_norm"]):
        return "no gradient", "every conv layer's weight gradient is exactly 0"
    if largest < VANISHED:
        return "vanished", numbers
    if not math.isfinite(r) or r <= 0:
        return "unmeasurable", f"{numbers}: the last conv layer's gradient is 0, no ratio"
    if r > HEALTHY:
        return "explodes", numbers
    if r < 1 / HEALTHY:
        return "vanishes", numbers
    return "healthy", numbers


OUTCOME = {"healthy": AGREES, "vanishes": DISAGREES, "explodes": DISAGREES, "vanished": DISAGREES}
OUTCOME |= {"exploded": DISAGREES, "no gradient": UNDECIDED, "unmeasurable": UNDECIDED}


def zero_start(record: dict) -> bool:
    return record["at"] == "init" and record["design"]["init"] in ZERO_START and record["mode"] == "residual"


def construction(mine: list[dict]) -> str:
    """Why the verdict on these nets could not have been otherwise ("" when it could)."""
    if not mine or not all(zero_start(r) for r in mine):
        return ""
    if all(r["flow"] == "no gradient" for r in mine):
        return "Fixup's classifier starts at zero, so no gradient reaches any layer at initialisation"
    if all(r["flow"] == "unmeasurable" for r in mine):
        return (
            "each residual branch ends in a zero (its last BN scale, SkipInit's alpha), so the branch's convolutions "
            "receive no gradient until it moves, and the last conv layer's gradient is 0"
        )
    return ""


def verdicts(records: list[dict]) -> list[Verdict]:
    """He et al.'s claim per design and per state (the checkpoint, initialisation): agrees when
    every net's gradient is healthy, does not agree when one vanishes, explodes, or has vanished
    or exploded everywhere, cannot decide when one cannot be measured and none contradicts."""
    out = []
    designs: dict[str, list[dict]] = {}
    for r in records:
        designs.setdefault(design_text([r]), []).append(r)
    criterion = (
        f"any layer's update size lr*|g|/|w| above {EXPLODED:g} or a non-finite loss: exploded; no gradient (all "
        f"zero): cannot decide; every layer's update size below {VANISHED:g}: vanished; else the first / last conv "
        f"layer gradient per weight within a factor of {HEALTHY:g} either way: healthy, below 1/{HEALTHY:g} vanishes, "
        f"above {HEALTHY:g} explodes toward the input"
    )
    for of_design in designs.values():
        normalised = all(r["design"]["norm"] == "batch" for r in of_design)
        tag = design_tag(of_design)
        claim = (BN_CLAIM if normalised else "the gradients keep healthy norms") + (f" [{tag}]" if tag else "")
        source = "He et al. 2015, Sec. 4.1" if normalised else "resexp analyze gradients (He et al. claim it with BN)"
        for at, when in (("checkpoint", "at the checkpoint"), ("init", "at initialisation")):
            mine = [r for r in of_design if r["at"] == at]
            if not mine:
                continue
            outcome = overall(OUTCOME[r["flow"]] for r in mine)
            per_net = "; ".join(f"{r['net']} s{r['seed']} {r['flow']} ({r['flow_why']})" for r in mine)
            out.append(
                Verdict(
                    f"{claim}, {when}",
                    source,
                    outcome,
                    f"{per_net}; criterion: {criterion}",
                    judged_on(mine),
                    construction(mine),
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
        weights.plot(range(1, len(r["weight_norm"]) + 1), [max(v, 1e-30) for v in r["weight_norm"]], **style)
        inputs.plot(range(1, len(r["input_norm"]) + 1), [max(v, 1e-30) for v in r["input_norm"]], **style)
    weights.set(
        xlabel="conv layer (stem = 1)", ylabel="|dL/dW|", yscale="log", title="w.r.t. each conv layer's weights"
    )
    inputs.set(xlabel="block", ylabel="|dL/dx|", yscale="log", title="w.r.t. each block's input")
    for ax in (weights, inputs):
        ax.grid(alpha=0.3, which="both")
    weights.legend(fontsize=7)
    fig.suptitle("Gradient flow on one training batch (solid: checkpoint, dotted: initialisation; 1e-30 = zero)")
    fig.tight_layout()
    return fig
