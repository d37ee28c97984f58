"""Signal propagation: how a signal and its gradient travel through each net, from one forward
and backward pass on a fixed training batch (the run's first, as its training saw it; BN in
training mode, as in a training step), at initialisation or at the checkpoint.

Per position in the net (after the stem, then after each block), three numbers on a log scale:
the standard deviation of the stream, the norm of the loss gradient with respect to the stream,
and, for each residual block, the ratio of its branch's output norm to its shortcut's (how far
the block is from the identity). They put the lectures' two explanations of residual learning to
the numbers (README, "Which explanation holds?"):

- "shortcuts cure vanishing gradients": the gradient toward the input, the norm at the stem's
  output over the norm at the last block's: it vanishes below 1/FACTOR, explodes above FACTOR,
  is healthy between (a gradient that is exactly zero, as under Fixup's zero classifier at
  initialisation, cannot be judged);
- the forward signal likewise: the stream's std after the last block over that after the stem;
- "a residual block can easily learn the identity": close to it when its branch's output norm is
  at most NEAR of its shortcut's; a net's residual blocks stay close to the identity when the
  median block does.

The verdicts are the claims as lectures state them, judged over every net they are about.
"""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resexp.analysis import COLOURS, Options, Result, pyplot
from resexp.analysis.subjects import Subject
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED, Verdict, overall
from resexp.models import Block

FACTOR = 100.0  # a ratio beyond this either way vanishes or explodes
NEAR = 0.5  # branch / shortcut norm at most this: close to the identity


def propagation(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One forward and backward pass of a copy of `model` in training mode: the stream's std and
    gradient norm after the stem and after each block, each residual block's branch / shortcut
    output norm ratio (None for a plain block), and the loss."""
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
    return {
        "std": [float(s.detach().float().std()) for s in streams],
        "gradient": [float(s.grad.float().norm()) if s.grad is not None else 0.0 for s in streams],
        "branch_ratio": branches,
        "loss": loss.item(),
    }


def trend(first: float, last: float) -> tuple[float, str]:
    """(first / last, what it says) with FACTOR: vanishes, explodes, healthy or unmeasurable."""
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0 or last <= 0:
        return math.nan, "unmeasurable"
    r = first / last
    return r, "vanishes" if r < 1 / FACTOR else "explodes" if r > FACTOR else "healthy"


def analyze(nets: list[Subject], options: Options, base: Path, progress) -> Result:
    records = []
    for net in nets:
        progress(f"signal: {net.name}")
        x, y = net.first_batch(options.images)
        model = net.initial_model() if options.at_init else net.model
        p = propagation(model, x, y)
        toward_input = trend(p["gradient"][0], p["gradient"][-1])  # at the input's end over the output's
        forward = trend(p["std"][-1], p["std"][0])  # after the last block over after the stem
        ratios = [r for r in p["branch_ratio"] if r is not None]
        records.append(
            {
                **net.record(),
                "images": len(y),
                **p,
                "gradient_ratio": toward_input[0],
                "gradient_trend": toward_input[1],
                "signal_ratio": forward[0],
                "signal_trend": forward[1],
                "median_branch_ratio": statistics.median(ratios) if ratios else None,
            }
        )
    columns = [
        "net",
        "seed",
        "loss",
        "gradient: stem / last block",
        "signal: last block / stem",
        "median branch / shortcut",
    ]
    rows = [
        [
            r["net"],
            str(r["seed"]),
            f"{r['loss']:.3g}",
            f"{r['gradient_ratio']:.3g} ({r['gradient_trend']})",
            f"{r['signal_ratio']:.3g} ({r['signal_trend']})",
            "-" if r["median_branch_ratio"] is None else f"{r['median_branch_ratio']:.3g}",
        ]
        for r in records
    ]
    return Result("signal", records, columns, rows, verdicts(records), figure(nets, records))


def judged(records: list[dict], key: str, wanted: set[str]) -> tuple[str, str]:
    """(outcome, numbers): agrees when every net's `key` trend is one of `wanted`, does not when
    one is measurable and not, cannot decide otherwise."""
    outcomes = [
        AGREES if r[f"{key}_trend"] in wanted else UNDECIDED if r[f"{key}_trend"] == "unmeasurable" else DISAGREES
        for r in records
    ]
    numbers = "; ".join(f"{r['net']} s{r['seed']} {r[f'{key}_ratio']:.3g} ({r[f'{key}_trend']})" for r in records)
    return overall(outcomes), numbers


def verdicts(records: list[dict]) -> list[Verdict]:
    """Each claim judged over the nets it is about, per design (norm, init, ... as the nets'
    settings say): the lectures' story may hold under one design and not under another."""
    designs: dict[str, list[dict]] = {}
    for r in records:
        designs.setdefault(design_of(r), []).append(r)
    out = []
    for design, mine in designs.items():
        out += [
            Verdict(v.claim + (f" [{design}]" if design else ""), v.source, v.outcome, v.why)
            for v in design_verdicts(mine)
        ]
    return out


def design_of(record: dict) -> str:
    """The settings that are not the net's depth, mode or seed (they are in its name already)."""
    return "" if record.get("settings", "-") == "-" else record["settings"]


def design_verdicts(records: list[dict]) -> list[Verdict]:
    plain = [r for r in records if r["mode"] == "plain"]
    residual = [r for r in records if r["mode"] == "residual"]
    criterion = f"vanishes below 1/{FACTOR:g}, explodes above {FACTOR:g}"
    out = []
    for mine, claim, wanted, key in (
        (plain, "in a plain net the gradient vanishes toward the input", {"vanishes"}, "gradient"),
        (plain, "in a plain net the gradient explodes toward the input", {"explodes"}, "gradient"),
        (residual, "shortcuts keep the gradient from vanishing or exploding toward the input", {"healthy"}, "gradient"),
        (records, "the forward signal keeps its scale through the net", {"healthy"}, "signal"),
    ):
        if not mine:
            continue
        outcome, numbers = judged(mine, key, wanted)
        what = "gradient at the stem / at the last block" if key == "gradient" else "std after the last block / stem"
        out.append(Verdict(claim, "lectures; resexp analyze signal", outcome, f"{what}: {numbers}; {criterion}"))
    if residual:
        outcomes, parts = [], []
        for r in residual:
            m = r["median_branch_ratio"]
            if m is None or not math.isfinite(m):
                outcomes.append(UNDECIDED)
                parts.append(f"{r['net']} s{r['seed']} -")
                continue
            outcomes.append(AGREES if m <= NEAR else DISAGREES)
            parts.append(f"{r['net']} s{r['seed']} {m:.3g}")
        why = f"median branch / shortcut output norm: {'; '.join(parts)}; close to the identity at most {NEAR:g}"
        claim = "each residual block stays close to the identity"
        out.append(Verdict(claim, "lectures; He et al. 2015, Sec. 3.1", overall(outcomes), why))
    return out


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
