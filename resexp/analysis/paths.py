"""Paths, Veit, Wilber and Belongie 2016, "Residual networks behave like ensembles of relatively
shallow networks" (Sec. 5, Fig. 6): which paths carry the gradient.

Unrolled, a residual net of n blocks is 2^n paths: each block is passed either through its
residual branch or through its shortcut, and a path of length k goes through k branches. There
are C(n, k) paths of length k. Veit et al. measure, for each k, the gradient that reaches the
input through a single path of length k, and find (ResNet-110, 54 blocks) that it shrinks with k
fast enough that nearly all of the gradient comes from paths of 5 to 17 blocks: the "effective
paths", far shorter than the net.

What is measured here, per net, on one fixed batch of the run's own training images (its first,
as training saw it; `--images` cuts it):
- the batch goes forward through the whole net once, BN in training mode (batch statistics, as
  in a training step, as Veit et al. feed a batch forward "through the whole network");
- for each length k = 0 .. n, `--samples` sets of k blocks are drawn (different sets, every set
  where there are no more; seeded), and for each the loss gradient is sent backward through that
  single path: through the residual branch of each chosen block and only the shortcut of every
  other one. The ReLU after an addition and the BN-ReLU a pre-activation unit applies before its
  split belong to both paths, as they do in the net; each skipped branch is left out of the
  backward pass entirely (its BN included): only the forward pass saw it;
- the norm of the gradient that arrives at the stem's output (the stream's start, where every
  path begins; the stem itself is shared by all paths), averaged over the samples: the gradient
  per path of length k (Fig. 6b);
- the total gradient of length k, C(n, k) times that (Fig. 6c: a sum of magnitudes, as Veit et
  al. sum them, not the norm of the summed vectors).

Every block counts as a block of the unrolled net, the downsampling ones too; their shortcut is
not the identity (option A subsamples and pads with zeros, B and C project), so the gradient
through it is what that shortcut passes back. A plain net has one path: nothing to compare.

The claim, about trained nets (decided on nets trained to convergence only,
resexp.analysis.verdict.on_trained), for each net: "most of the gradient comes from paths much
shorter than the net": agrees when paths shorter than half the net's blocks carry at least SHORT_SHARE of the
total gradient, does not agree otherwise (by the binomial counts alone they carry about half:
only a gradient that shrinks with length gives them more); a net of fewer than MIN_BLOCKS blocks,
or one through which no gradient flows (Fixup's zero classifier at initialisation), cannot decide.
Reported beside it: the effective path lengths, the shortest range of lengths around the peak that
carries EFFECTIVE of the total.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resexp.analysis.protocol import Options, colour_of, pyplot
from resexp.analysis.subjects import Subject
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED, Verdict, judged_on, on_trained, overall
from resexp.nets.blocks import Block

SHORT_SHARE = 0.9  # of the total gradient, from paths shorter than half the net: "most of it"
EFFECTIVE = 0.9  # the effective paths: the shortest range of lengths holding this share of the total
MIN_BLOCKS = 4  # fewer residual blocks make no distribution of lengths


class Route(torch.autograd.Function):
    """branch + shortcut forward; backward through one of them only, as `choice[0]` says when
    the backward pass runs (True: the branch, False: the shortcut)."""

    @staticmethod
    def forward(ctx, branch: torch.Tensor, shortcut: torch.Tensor, choice: list[bool]) -> torch.Tensor:  # noqa: ANN001
        ctx.choice = choice
        return branch + shortcut

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        through_branch = ctx.choice[0]
        return (grad if through_branch else None), (None if through_branch else grad), None


class Routed(nn.Module):
    """A residual block whose backward pass goes through its branch or its shortcut, not both."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block
        self.choice = [True]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        if b.preact is not None:
            x = b.preact(x)
        out = Route.apply(b.body(x), b.shortcut(x), self.choice)
        return F.relu(out) if b.post_relu else out


class Unrolled:
    """A copy of a residual net, forward once on a batch, whose loss gradient at the stem's output
    can then be taken through any single path (`gradient(chosen)`)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        net = copy.deepcopy(model).train()
        self.routes: list[Routed] = []
        for stage in net.stages:
            for i, block in enumerate(stage):
                if isinstance(block, Block) and block.shortcut is not None:
                    stage[i] = Routed(block)
                    self.routes.append(stage[i])
        self.stream = net.stem(x).detach().requires_grad_(True)
        self.loss = F.cross_entropy(net.head(net.stages(self.stream)), y)

    @property
    def blocks(self) -> int:
        return len(self.routes)

    def gradient(self, chosen: set[int] | tuple[int, ...]) -> float:
        """The norm of the loss gradient at the stem's output through the path whose branches are
        those of the blocks `chosen` (indices among the residual blocks)."""
        for i, route in enumerate(self.routes):
            route.choice[0] = i in chosen
        (grad,) = torch.autograd.grad(self.loss, self.stream, retain_graph=True, allow_unused=True)
        return 0.0 if grad is None else float(grad.float().norm())


def path_sets(n: int, k: int, samples: int, rng: random.Random) -> list[tuple[int, ...]]:
    """`samples` different sets of k of n blocks, drawn at random; every set when there are no more."""
    if math.comb(n, k) <= samples:
        return list(itertools.combinations(range(n), k))
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < samples:
        chosen.add(tuple(sorted(rng.sample(range(n), k))))
    return sorted(chosen)


def path_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int, seed: int, progress=None) -> dict:
    """Per path length k = 0 .. n: the number of paths C(n, k), the mean gradient norm per path
    (over the sampled sets, exact where every set was taken) and the total C(n, k) x that."""
    unrolled = Unrolled(model, x, y)
    n, rng = unrolled.blocks, random.Random(seed)
    per_path, exact = [], []
    for k in range(n + 1):
        if progress is not None:
            progress(k, n)
        sets = path_sets(n, k, samples, rng)
        per_path.append(sum(unrolled.gradient(s) for s in sets) / len(sets))
        exact.append(len(sets) == math.comb(n, k))
    counts = [math.comb(n, k) for k in range(n + 1)]
    total = [c * g for c, g in zip(counts, per_path, strict=True)]
    return {"blocks": n, "counts": counts, "per_path": per_path, "total": total, "exact": exact}


def shares(record: dict) -> dict:
    """The share of the total gradient from paths shorter than half the net, and the effective
    lengths (the shortest range around the peak holding EFFECTIVE of the total)."""
    total, n = record["total"], record["blocks"]
    whole = sum(total)
    if n == 0 or not whole > 0 or not math.isfinite(whole):
        return {"short_share": None, "effective": None, "peak": None}
    short = sum(t for k, t in enumerate(total) if k < n / 2) / whole
    peak = max(range(n + 1), key=total.__getitem__)
    low, high, held = peak, peak, total[peak]
    while held < EFFECTIVE * whole:  # widen toward the larger neighbour
        left = total[low - 1] if low > 0 else -1.0
        right = total[high + 1] if high < n else -1.0
        if left >= right:
            low, held = low - 1, held + left
        else:
            high, held = high + 1, held + right
    return {"short_share": short, "effective": [low, high], "peak": peak}


COLUMNS = ["net", "seed", "blocks", "effective lengths", "share from paths < n/2", "peak length"]


def measure(net: Subject, options: Options, base: Path, progress) -> list[dict]:
    subject = net.initial() if options.at_init else net
    x, y = net.first_batch(options.images)
    record = {**subject.record(), "images": len(y), "samples": options.samples}
    if net.run.mode == "plain":  # one path: the net itself
        record.update({"blocks": 0, "counts": [1], "per_path": [], "total": [], "exact": []})
        return [{**record, **shares(record)}]

    def note(k: int, n: int) -> None:
        if k in (0, n) or k % 10 == 0:
            progress(f"paths: {net.name}: length {k} of {n}")

    record.update(path_gradients(subject.model, x, y, options.samples, options.seed, note))
    return [{**record, **shares(record)}]


def rows(records: list[dict]) -> list[list[str]]:
    return [
        [
            r["net"],
            str(r["seed"]),
            str(r["blocks"]),
            "-" if r["effective"] is None else f"{r['effective'][0]} to {r['effective'][1]}",
            "-" if r["short_share"] is None else f"{r['short_share']:.3f}",
            "-" if r["peak"] is None else str(r["peak"]),
        ]
        for r in records
    ]


def short_paths(record: dict) -> tuple[str, str]:
    """(outcome, numbers) of the claim for one net."""
    name = f"{record['net']} s{record['seed']}"
    if record["mode"] == "plain":
        return UNDECIDED, f"{name}: a plain net has one path"
    if record["blocks"] < MIN_BLOCKS:
        return UNDECIDED, f"{name}: {record['blocks']} residual blocks, fewer than {MIN_BLOCKS}"
    if record["short_share"] is None:
        return UNDECIDED, f"{name}: no gradient reaches the stem through any path"
    low, high = record["effective"]
    text = (
        f"{name}: {record['short_share']:.3f} of the total from paths shorter than {record['blocks'] / 2:g} blocks; "
        f"effective paths {low} to {high} of {record['blocks']} blocks"
    )
    return (AGREES if record["short_share"] >= SHORT_SHARE else DISAGREES), text


def verdicts(records: list[dict]) -> list[Verdict]:
    """Veit et al.'s claim is about trained nets: decided on the nets trained to convergence."""
    return on_trained(records, decide)


def decide(records: list[dict]) -> list[Verdict]:
    """One verdict per net (its seeds together): how much shorter the effective paths are depends
    on the depth, and one shallow net's answer must not stand for a deep one's."""
    by_net: dict[str, list[dict]] = {}
    for r in records:
        by_net.setdefault(r["net"], []).append(r)
    out = []
    for net, mine in by_net.items():
        judged = [short_paths(r) for r in mine]
        why = "; ".join(text for _, text in judged) + (
            f"; criterion: paths shorter than half the net carry at least {SHORT_SHARE:g} of the total gradient "
            f"(C(n, k) x the mean gradient per path of length k, at the stem's output); by the counts alone about half"
        )
        claim = f"most of the gradient of {net} comes from paths much shorter than the net"
        outcome = overall(o for o, _ in judged)
        out.append(Verdict(claim, "Veit et al. 2016, Sec. 5, Fig. 6", outcome, why, judged_on(mine)))
    return out


def figure(nets: list[Subject], records: list[dict]):
    """Veit et al.'s Fig. 6 for each residual net: (a) the number of paths of each length, (b) the
    gradient per path, log scale, (c) the total gradient of each length (its effective range shaded)."""
    plt = pyplot()
    colour = colour_of(nets)
    fig, (counts, per_path, total) = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in (r for r in records if r["blocks"]):
        style = dict(color=colour[r["net"]], lw=1.4, label=f"{r['net']} s{r['seed']}")
        ks = range(r["blocks"] + 1)
        counts.plot(ks, r["counts"], **style)
        per_path.plot(ks, [max(g, 1e-30) for g in r["per_path"]], **style)
        whole = sum(r["total"]) or 1.0
        total.plot(ks, [t / whole for t in r["total"]], **style)
        if r["effective"] is not None:
            total.axvspan(r["effective"][0], r["effective"][1], color=colour[r["net"]], alpha=0.08)
    counts.set(xlabel="path length (blocks)", ylabel="number of paths", yscale="log", title="(a) paths of each length")
    per_path.set(
        xlabel="path length (blocks)", ylabel="|dL/d stream| at the stem", yscale="log", title="(b) gradient per path"
    )
    total.set(
        xlabel="path length (blocks)",
        ylabel="share of the total gradient",
        title="(c) total gradient (shaded: effective)",
    )
    for ax in (counts, per_path, total):
        ax.grid(alpha=0.3, which="both")
    if any(r["blocks"] for r in records):
        counts.legend(fontsize=7)
    else:  # plain nets only: one path each
        counts.text(0.5, 0.5, "plain nets: one path each", ha="center", transform=counts.transAxes)
    fig.suptitle("Which paths carry the gradient (Veit et al. 2016, Fig. 6), on one training batch")
    fig.tight_layout()
    return fig
