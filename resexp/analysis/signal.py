"""Signal propagation: how a signal and its gradient travel through each net, from one forward
and backward pass on a fixed training batch (the run's first, as its training saw it; BN in
training mode, as in a training step), at initialisation or at the checkpoint.

Per position in the net (after the stem, then after each block), three numbers on a log scale:
the standard deviation of the stream, the norm of the loss gradient with respect to the stream,
and, for each residual block, the ratio of its branch's output norm to its shortcut's (how far
the block is from the identity). They put the lectures' explanations of residual learning to the
numbers (README, "Which explanation holds?"), each judged per design (norm, init, block, body),
and each saying what it was judged on (resexp.analysis.verdict):

- "shortcuts cure vanishing gradients": the gradient toward the input, the norm at the stem's
  output over the norm at the last block's (judged for each depth of plain net, and over the
  residual nets together): it vanishes below 1/FACTOR, explodes above FACTOR,
  is healthy between (a gradient that is exactly zero, as under Fixup's zero classifier at
  initialisation, cannot be judged);
- the forward signal likewise: the stream's std after the last block over that after the stem.
  With BN after every conv of the 2015 block this holds by construction (each block's output
  scale is BN's own), and the verdict says so;
- "a residual block can easily learn the identity": close to it when its branch's output norm is
  at most NEAR of its shortcut's; a net's residual blocks are close to the identity when the
  median block is. At initialisation this is the design's starting point ("starts close to the
  identity"; by construction for the inits that start each branch at zero); at the checkpoint it
  is a claim about trained nets, decided only on nets trained to convergence. A branch that
  receives no gradient although the stream after it does is dead: it is the identity because it
  cannot learn, and its net cannot decide the claim.
"""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resexp.analysis.protocol import COLOURS, Options, pyplot
from resexp.analysis.subjects import Subject
from resexp.analysis.verdict import (
    AGREES,
    DISAGREES,
    UNDECIDED,
    Verdict,
    design_tag,
    design_text,
    judged_on,
    on_trained,
    overall,
)
from resexp.nets.blocks import Block

FACTOR = 100.0  # a ratio beyond this either way vanishes or explodes
NEAR = 0.5  # branch / shortcut norm at most this: close to the identity
ZERO_START = {"zero_gamma": "the last BN scale", "skipinit": "the scalar alpha", "fixup": "the last conv"}
BN_SCALE = (
    "with BN after every conv of the 2015 block, the stream after each block is a sum of BN outputs, whose scale "
    "is BN's own (gamma, beta), not carried through the depth: it cannot vanish, and grows at most as the square "
    "root of the number of blocks"
)


def propagation(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One forward and backward pass of a copy of `model` in training mode: the stream's std and
    gradient norm after the stem and after each block, each residual block's branch / shortcut
    output norm ratio (None for a plain block), whether its branch is dead (no parameter of it
    receives a gradient while the stream after it does; None for a plain block), and the loss."""
    net = copy.deepcopy(model).train()
    blocks = [m for m in net.modules() if isinstance(m, Block)]
    streams: list[torch.Tensor] = []
    branches: list[float | None] = []

    def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        streams.append(out)

    def ratio(block: Block):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if block.shortcut is None:
                branches.append(None)
                return
            with torch.no_grad():  # the same body output the block adds, measured once
                branch = out.detach().float().norm()
                shortcut = block.shortcut(args[0]).detach().float().norm()
            branches.append(float(branch / shortcut) if shortcut > 0 else math.inf)

        return hook

    handles = [net.stem.register_forward_hook(keep)]
    for block in blocks:
        handles.append(block.body.register_forward_hook(ratio(block)))
        handles.append(block.register_forward_hook(keep))
    try:
        loss = F.cross_entropy(net(x), y)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    gradient = [float(s.grad.float().norm()) if s.grad is not None else 0.0 for s in streams]
    dead = [
        None
        if block.shortcut is None
        else gradient[k + 1] > 0 and not any(p.grad is not None and bool(p.grad.any()) for p in block.body.parameters())
        for k, block in enumerate(blocks)
    ]
    return {
        "std": [float(s.detach().float().std()) for s in streams],
        "gradient": gradient,
        "branch_ratio": branches,
        "dead": dead,
        "loss": loss.item(),
    }


def trend(first: float, last: float) -> tuple[float, str]:
    """(first / last, what it says) with FACTOR: vanishes, explodes, healthy or unmeasurable."""
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0 or last <= 0:
        return math.nan, "unmeasurable"
    r = first / last
    return r, "vanishes" if r < 1 / FACTOR else "explodes" if r > FACTOR else "healthy"


COLUMNS = [
    "net",
    "seed",
    "loss",
    "gradient: stem / last block",
    "signal: last block / stem",
    "median branch / shortcut",
]


def measure(net: Subject, options: Options, base: Path, progress) -> list[dict]:
    progress(f"signal: {net.name}")
    x, y = net.first_batch(options.images)
    subject = net.initial() if options.at_init else net
    p = propagation(subject.model, x, y)
    toward_input = trend(p["gradient"][0], p["gradient"][-1])  # at the input's end over the output's
    forward = trend(p["std"][-1], p["std"][0])  # after the last block over after the stem
    start = None
    if not subject.training.initialised:  # where training began: how far it moved each block
        start = median_ratio(propagation(net.initial().model, x, y))
    return [
        {
            **subject.record(),
            "images": len(y),
            **p,
            "gradient_ratio": toward_input[0],
            "gradient_trend": toward_input[1],
            "signal_ratio": forward[0],
            "signal_trend": forward[1],
            "median_branch_ratio": median_ratio(p),
            "initial_median_branch_ratio": start,
            "dead_blocks": sum(bool(d) for d in p["dead"]),
        }
    ]


def rows(records: list[dict]) -> list[list[str]]:
    return [
        [
            r["net"],
            str(r["seed"]),
            f"{r['loss']:.3g}",
            f"{number(r['gradient_ratio'])} ({r['gradient_trend']})",
            f"{number(r['signal_ratio'])} ({r['signal_trend']})",
            branch_cell(r),
        ]
        for r in records
    ]


def median_ratio(p: dict) -> float | None:
    """The median branch / shortcut ratio over the residual blocks whose branch is not dead."""
    live = [r for r, d in zip(p["branch_ratio"], p["dead"], strict=True) if r is not None and not d]
    return statistics.median(live) if live else None


def branch_cell(record: dict) -> str:
    m, dead = record["median_branch_ratio"], record["dead_blocks"]
    text = "-" if m is None else f"{m:.3g}"
    return text + (f" ({dead} dead)" if dead else "")


def number(value: float | None) -> str:
    """A ratio as the verdicts show it; "-" where there is none (NaN, which JSON keeps as null)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"


def judged(records: list[dict], key: str, wanted: set[str]) -> tuple[str, str]:
    """(outcome, numbers): agrees when every net's `key` trend is one of `wanted`, does not when
    one is measurable and not, cannot decide otherwise."""
    outcomes = [
        AGREES if r[f"{key}_trend"] in wanted else UNDECIDED if r[f"{key}_trend"] == "unmeasurable" else DISAGREES
        for r in records
    ]
    numbers = "; ".join(f"{r['net']} s{r['seed']} {number(r[f'{key}_ratio'])} ({r[f'{key}_trend']})" for r in records)
    return overall(outcomes), numbers


def verdicts(records: list[dict]) -> list[Verdict]:
    """Each claim judged over the nets it is about, per design (norm, init, block, body): the
    lectures' story may hold under one design and not under another."""
    designs: dict[str, list[dict]] = {}
    for r in records:
        designs.setdefault(design_text([r]), []).append(r)
    out = []
    for mine in designs.values():
        tag = design_tag(mine)
        out += [replace_claim(v, v.claim + (f" [{tag}]" if tag else "")) for v in design_verdicts(mine)]
    return out


def replace_claim(verdict: Verdict, claim: str) -> Verdict:
    return Verdict(claim, verdict.source, verdict.outcome, verdict.why, verdict.judged_on, verdict.construction)


def zero_start(records: list[dict]) -> str:
    """What starts each branch at zero, when every net is a residual net at initialisation whose
    init does ("" otherwise)."""
    inits = {r["design"]["init"] for r in records}
    at_init = all(r["training"]["kind"] in ("initialised", "fresh") for r in records)
    if at_init and len(inits) == 1 and (init := inits.pop()) in ZERO_START:
        return ZERO_START[init]
    return ""


def design_verdicts(records: list[dict]) -> list[Verdict]:
    plain = [r for r in records if r["mode"] == "plain"]
    residual = [r for r in records if r["mode"] == "residual"]
    criterion = f"vanishes below 1/{FACTOR:g}, explodes above {FACTOR:g}"
    by_depth: dict[str, list[dict]] = {}
    for r in plain:  # the lectures' story is about deep plain nets: each depth its own verdict
        by_depth.setdefault(r["net"].split(" (")[0], []).append(r)
    claims = [
        (mine, f"in {net} the gradient {how} toward the input", {how}, "gradient")
        for net, mine in by_depth.items()
        for how in ("vanishes", "explodes")
    ]
    claims += [
        (residual, "shortcuts keep the gradient from vanishing or exploding toward the input", {"healthy"}, "gradient"),
        (records, "the forward signal keeps its scale through the net", {"healthy"}, "signal"),
    ]
    out = []
    for mine, claim, wanted, key in claims:
        if not mine:
            continue
        outcome, numbers = judged(mine, key, wanted)
        what = "gradient at the stem / at the last block" if key == "gradient" else "std after the last block / stem"
        out.append(
            Verdict(
                claim,
                "lectures; resexp analyze signal",
                outcome,
                f"{what}: {numbers}; {criterion}",
                judged_on(mine),
                construction(mine, key),
            )
        )
    if residual:
        out += identity_verdicts(residual)
    return out


def construction(records: list[dict], key: str) -> str:
    """Why a gradient or signal verdict on these nets could not have been otherwise ("" when it could)."""
    if key == "signal" and all(r["design"]["norm"] == "batch" and r["design"]["block"] == "post" for r in records):
        return BN_SCALE
    start = zero_start(records) if all(r["mode"] == "residual" for r in records) else ""
    if key == "signal" and start:
        return (
            f"{start} of each branch starts at zero, so every block is its shortcut and the stream keeps the stem's "
            "scale (thinned only by option A's zero channels)"
        )
    if key == "gradient" and start:
        if all(r["gradient_trend"] == "unmeasurable" for r in records):
            return "Fixup's classifier starts at zero, so no gradient reaches the stream at initialisation"
        return (
            f"{start} of each branch starts at zero, so every block that keeps its shape is exactly its shortcut and "
            "passes the gradient on unchanged"
        )
    return ""


def near_identity(records: list[dict]) -> tuple[str, str]:
    """(outcome, numbers) of "the median residual block is close to the identity", per net: a
    net with a dead branch cannot decide."""
    outcomes, parts = [], []
    for r in records:
        m, name = r["median_branch_ratio"], f"{r['net']} s{r['seed']}"
        if r["dead_blocks"]:
            outcomes.append(UNDECIDED)
            blocks = sum(d is not None for d in r["dead"])
            parts.append(f"{name}: {r['dead_blocks']} of {blocks} branches dead (no gradient reaches them)")
        elif m is None or not math.isfinite(m):
            outcomes.append(UNDECIDED)
            parts.append(f"{name} -")
        else:
            outcomes.append(AGREES if m <= NEAR else DISAGREES)
            start = r.get("initial_median_branch_ratio")
            began = "" if start is None else f" (at initialisation {start:.3g})"
            if start is not None and r["training"]["kind"] == "published":
                began = f" (a fresh initialisation of its architecture: {start:.3g})"
            parts.append(f"{name} {m:.3g}{began}")
    return overall(outcomes), "; ".join(parts)


def identity_verdicts(residual: list[dict]) -> list[Verdict]:
    """At initialisation: where the design starts each block. At the checkpoint: whether training
    leaves each block close to the identity, decided on nets trained to convergence only."""
    criterion = f"close to the identity: the median block's branch / shortcut output norm at most {NEAR:g}"
    initialised = [r for r in residual if r["training"]["kind"] in ("initialised", "fresh")]
    trained = [r for r in residual if r not in initialised]
    out = []
    if initialised:
        outcome, numbers = near_identity(initialised)
        start = zero_start(initialised)
        out.append(
            Verdict(
                "each residual block starts close to the identity",
                "lectures; He et al. 2015, Sec. 3.1",
                outcome,
                f"median branch / shortcut output norm: {numbers}; {criterion}",
                judged_on(initialised),
                f"{start} of each branch starts at zero: each block starts as its shortcut" if start else "",
            )
        )
    by_net: dict[str, list[dict]] = {}
    for r in trained:  # one verdict per net: the answer depends on the depth
        by_net.setdefault(r["net"], []).append(r)
    for net, mine in by_net.items():

        def decide(nets: list[dict], net: str = net) -> list[Verdict]:
            outcome, numbers = near_identity(nets)
            why = f"median branch / shortcut output norm: {numbers}; {criterion}"
            claim = f"a residual block learns the identity: after training each block of {net} is close to it"
            return [Verdict(claim, "lectures; He et al. 2015, Sec. 3.1", outcome, why, judged_on(nets))]

        out += on_trained(mine, decide)
    return out


def design_of(record: dict) -> str:
    """The settings that tell the nets of one analysis apart besides depth, mode and seed: a figure row each."""
    return "" if record.get("settings", "-") == "-" else record["settings"]


def figure(nets: list[Subject], records: list[dict]):
    """One row of three panels per design (the settings that are not depth, mode or seed), so that
    plain and residual nets of one design are compared on their own: colour by depth, dashed plain,
    solid residual."""
    plt = pyplot()
    designs = list(dict.fromkeys(design_of(r) for r in records))
    depths = sorted({r["depth"] for r in records})
    colour = {d: COLOURS[i % len(COLOURS)] for i, d in enumerate(depths)}
    fig, axes = plt.subplots(len(designs), 3, figsize=(15, 3.6 * len(designs) + 0.6), squeeze=False)
    where = "after the stem (0), after block k"
    for row, name in zip(axes, designs, strict=True):
        signal, ratio, gradient = row
        labelled = set()
        for r in (r for r in records if design_of(r) == name):
            label = r["net"].split(" (")[0]
            style = dict(color=colour[r["depth"]], ls="--" if r["mode"] == "plain" else "-", lw=1.4)
            style["label"] = None if label in labelled else label
            labelled.add(label)
            positions = range(len(r["std"]))
            signal.plot(positions, [max(v, 1e-30) for v in r["std"]], **style)
            gradient.plot(positions, [max(v, 1e-30) for v in r["gradient"]], **style)
            blocks = [(i + 1, v) for i, v in enumerate(r["branch_ratio"]) if v is not None and math.isfinite(v)]
            if blocks:
                ratio.plot([b for b, _ in blocks], [v for _, v in blocks], **style)
            dead = [i + 1 for i, d in enumerate(r["dead"]) if d]
            if dead:  # the identity because no gradient reaches them
                ratio.plot(dead, [0.0] * len(dead), "x", color="#d62728", ms=6, label="dead branch")
        title = f" ({name})" if name else ""
        signal.set(xlabel=where, ylabel="std of the stream", yscale="log", title="forward signal" + title)
        ratio.set(xlabel="block", ylabel="|branch| / |shortcut|", title="distance from the identity" + title)
        ratio.set_yscale("symlog", linthresh=0.01)  # a branch started at zero is drawn at 0
        ratio.axhline(NEAR, color="grey", ls=":", lw=1)
        gradient.set(xlabel=where, ylabel="|dL/d stream|", yscale="log", title="gradient" + title)
        for ax in row:
            ax.grid(alpha=0.3, which="both")
        signal.legend(fontsize=7, loc="best")
    fig.suptitle("Signal propagation on one training batch (dashed: plain, solid: residual; colour: depth)")
    fig.tight_layout()
    return fig
