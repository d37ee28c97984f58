"""Lesions, Veit, Wilber and Belongie 2016, "Residual networks behave like ensembles of relatively
shallow networks" (Figs. 3 and 5): the test error of a trained net with blocks removed.

Removing a residual block leaves its shortcut (the identity, or option A's zero-padded identity,
or a projection): the signal still flows. Removing a plain block leaves the identity, which is
only possible where the block keeps the shape of its input; the blocks that change it cannot be
removed and are reported as such. First each block alone, then k random blocks at once (k = 2 up
to every removable block, `draws` different sets of k blocks each, never the same set twice, and
every set where there are no more than `draws` of them); for k = 1 the mean is exact: the mean over
every single removal, which the first step has computed. A pre-activation unit that pre-activates
before the split keeps its BN-ReLU when its branch is removed: both paths read it.

Their findings, and the criteria resexp holds them to (each on a net whose intact error is at
least UNTRAINED points below chance; on one that is not, no lesion can show anything: cannot decide):
- residual nets, Fig. 3: removing one block that does not downsample barely changes the error: every
  such block's removal raises the test error by at most SMALL points (all blocks, not the median:
  one catastrophic block is a counter-example);
- residual nets, Fig. 5: the error rises smoothly with the number of blocks removed, as for an
  ensemble losing members: no single step of the mean error against k accounts for more than
  STEEPEST of the whole rise (needs at least MIN_STEPS removable blocks and a rise of more than SMALL).
  The verdict gives the spread of the draws at the two ends of its largest step (their standard
  error), and a step within NOISE standard errors of that limit cannot decide (more --draws);
- plain nets, Fig. 3: removing any block sends the error to chance: every removable block's removal
  takes the error at least HALFWAY from the intact net's error to chance.

They are claims about trained nets: decided on nets trained to convergence only
(resexp.analysis.verdict.on_trained).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from resexp.analysis.protocol import Options, colour_of, pyplot
from resexp.analysis.subjects import Subject
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED, Verdict, judged_on, on_trained, overall
from resexp.errors import NotRemovable
from resexp.nets.blocks import Block

SMALL = 5.0  # points of test error: "barely changes"
HALFWAY = 0.5  # of the way from the intact net's error to chance: "sends it to chance"
UNTRAINED = 10.0  # points below chance: a net closer to chance than this is not trained enough to judge
STEEPEST = 0.5  # the largest step of error against k, as a share of the whole rise: "smooth" below it
MIN_STEPS = 4  # removable blocks needed to call a curve smooth or not
NOISE = 2.0  # standard errors of the largest step: a step this close to the limit cannot decide


def blocks_of(model: nn.Module) -> list[tuple[nn.Sequential, int, Block]]:
    """(stage, index in the stage, block) for every block, in forward order."""
    return [(stage, i, block) for stage in model.stages for i, block in enumerate(stage)]


def changes_shape(block: Block) -> bool:
    convs = [m for m in block.body.modules() if isinstance(m, nn.Conv2d)]
    return convs[0].stride != (1, 1) or convs[0].in_channels != convs[-1].out_channels


def removable(block: Block) -> bool:
    return block.shortcut is not None or not changes_shape(block)


def what_remains(block: Block) -> nn.Module:
    """A block without its residual branch: its shortcut (after the BN-ReLU both paths read, in a
    pre-activation unit that has one), or in a plain net the identity."""
    if block.shortcut is not None:
        return block.shortcut if block.preact is None else nn.Sequential(block.preact, block.shortcut)
    if changes_shape(block):
        raise NotRemovable("a plain block that changes the shape of its input cannot be removed")
    return nn.Identity()


@contextmanager
def without(model: nn.Module, indices: set[int]) -> Iterator[nn.Module]:
    """The model with the blocks at `indices` removed (swapped in place, put back on exit)."""
    places = blocks_of(model)
    swapped = []
    try:
        for index in sorted(indices):
            stage, i, block = places[index]
            stage[i] = what_remains(block)
            swapped.append((stage, i, block))
        yield model
    finally:
        for stage, i, block in swapped:
            stage[i] = block


class Evaluator:
    """Test error with blocks removed. The input of every block of the intact net is kept, so a
    lesion starting at block i runs only the blocks from i on."""

    def __init__(self, model: nn.Module, batches, limit: int | None) -> None:
        xs, ys, seen = [], [], 0
        for x, y in batches:
            if limit is not None:
                x, y = x[: limit - seen], y[: limit - seen]
            xs.append(x)
            ys.append(y)
            seen += len(y)
            if limit is not None and seen >= limit:
                break
        self.model, self.y = model.eval(), torch.cat(ys)
        self.inputs: list[list[torch.Tensor]] = [[] for _ in blocks_of(model)]
        handles = [block.register_forward_pre_hook(self.keep(i)) for i, (_, _, block) in enumerate(blocks_of(model))]
        try:
            with torch.no_grad():
                self.intact = self.errors_of([model(x) for x in xs])
        finally:
            for handle in handles:
                handle.remove()

    def keep(self, index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            self.inputs[index].append(args[0])

        return hook

    def errors_of(self, logits: list[torch.Tensor]) -> float:
        return 100.0 * (torch.cat(logits).argmax(1) != self.y).float().mean().item()

    @torch.no_grad()
    def error(self, removed: set[int]) -> float:
        if not removed:
            return self.intact
        first = min(removed)
        with without(self.model, removed):
            flat = [module for stage in self.model.stages for module in stage]
            logits = []
            for x in self.inputs[first]:
                for module in flat[first:]:
                    x = module(x)
                logits.append(self.model.head(x))
        return self.errors_of(logits)


def lesion(model: nn.Module, batches, limit: int | None, draws: int, seed: int, progress) -> dict:
    evaluator = Evaluator(model, batches, limit)
    places = blocks_of(model)
    candidates = [i for i, (_, _, block) in enumerate(places) if removable(block)]
    single = [evaluator.error({i}) if i in candidates else None for i in range(len(places))]
    rng = random.Random(seed)
    by_k = {}
    exact = []  # the k whose every set of removed blocks was evaluated
    for k in range(1, len(candidates) + 1):
        progress(k, len(candidates))
        if k == 1:
            by_k[k] = [single[i] for i in candidates]
            exact.append(k)
            continue
        chosen = removal_sets(candidates, k, draws, rng)
        if len(chosen) == math.comb(len(candidates), k):
            exact.append(k)
        by_k[k] = [evaluator.error(set(c)) for c in chosen]
    downsampling = [i for i, (_, _, block) in enumerate(places) if changes_shape(block)]
    return {
        "intact": evaluator.intact,
        "images": len(evaluator.y),
        "single": single,
        "by_k": by_k,
        "exact": exact,
        "downsampling": downsampling,
    }


def removal_sets(candidates: list[int], k: int, draws: int, rng: random.Random) -> list[tuple[int, ...]]:
    """`draws` different sets of k of the candidates, drawn at random; every set when there are no
    more than `draws` of them."""
    total = math.comb(len(candidates), k)
    if total <= draws:
        return list(itertools.combinations(candidates, k))
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < draws:
        chosen.add(tuple(sorted(rng.sample(candidates, k))))
    return sorted(chosen)


COLUMNS = [
    "net",
    "seed",
    "test error",
    "one block removed: median",
    "max",
    "not removable",
    "half removed",
    "all removed",
]


def measure(net: Subject, options: Options, base: Path, progress) -> list[dict]:
    def note(k: int, total: int) -> None:
        if k in (1, total) or k % 10 == 0:
            progress(f"lesion: {net.name}: {k} of {total} blocks removed")

    result = lesion(net.model, net.data.evals["test"], options.images, options.draws, options.seed, note)
    return [{**net.record(), "chance": 100.0 * (1 - 1 / net.data.num_classes), **result}]


def rows(records: list[dict]) -> list[list[str]]:
    out = []
    for r in records:
        kept, ks = single_removals(r), len(r["by_k"])  # a net may have no block to remove, or only downsampling ones
        half = r["by_k"][max(1, ks // 2)] if ks else []
        out.append(
            [
                r["net"],
                str(r["seed"]),
                f"{r['intact']:.2f}",
                f"{statistics.median(kept):.2f}" if kept else "-",
                f"{max(kept):.2f}" if kept else "-",
                str(sum(e is None for e in r["single"])),
                f"{statistics.fmean(half):.2f}" if half else "-",
                f"{r['by_k'][ks][0]:.2f}" if ks else "-",
            ]
        )
    return out


def single_removals(record: dict) -> list[float]:
    """Errors with one block removed, for the blocks that do not downsample."""
    return [e for i, e in enumerate(record["single"]) if e is not None and i not in record["downsampling"]]


def trained(record: dict) -> bool:
    return record["intact"] <= record["chance"] - UNTRAINED


def single_block(record: dict) -> tuple[str, str]:
    """Fig. 3 for one net: (outcome, numbers)."""
    name, intact = f"{record['net']} s{record['seed']}", record["intact"]
    if not trained(record):
        return UNDECIDED, f"{name} {intact:.1f} intact: not trained (chance {record['chance']:.0f})"
    if record["mode"] == "residual":
        rises = {
            i: e - intact for i, e in enumerate(record["single"]) if e is not None and i not in record["downsampling"]
        }
        if not rises:
            return UNDECIDED, f"{name}: no block to remove but downsampling ones"
        worst = max(rises, key=rises.get)
        text = (
            f"{name} {intact:.1f} -> at most {intact + rises[worst]:.1f} (block {worst + 1} of {len(record['single'])})"
        )
        return (AGREES if rises[worst] <= SMALL else DISAGREES), text
    floor = {i: intact + HALFWAY * (record["chance"] - intact) for i, e in enumerate(record["single"]) if e is not None}
    if not floor:
        return UNDECIDED, f"{name}: no removable block"
    mildest = min(floor, key=lambda i: record["single"][i])
    error = record["single"][mildest]
    text = f"{name} {intact:.1f} -> at least {error:.1f} (block {mildest + 1}; halfway to chance: {floor[mildest]:.1f})"
    return (AGREES if error >= floor[mildest] else DISAGREES), text


def smoothness(record: dict) -> tuple[str, str]:
    """Fig. 5 for one residual net: (outcome, numbers)."""
    name = f"{record['net']} s{record['seed']}"
    ks = sorted(record["by_k"], key=int)
    if not trained(record):
        return UNDECIDED, f"{name}: not trained"
    if len(ks) < MIN_STEPS:
        return UNDECIDED, f"{name}: {len(ks)} removable blocks, fewer than {MIN_STEPS}"
    curve = [record["intact"], *(statistics.fmean(record["by_k"][k]) for k in ks)]
    rise = curve[-1] - curve[0]
    if rise <= SMALL:
        return UNDECIDED, f"{name}: removing every block raises the error by only {rise:.1f} points"
    steps = [b - a for a, b in zip(curve, curve[1:], strict=False)]
    k = max(range(len(steps)), key=steps.__getitem__)
    spread = "; ".join(f"{j} removed: {draws_spread(record, j)}" for j in (k, k + 1) if j > 0)
    noise = NOISE * math.hypot(*(standard_error(record, j) for j in (k, k + 1)))  # of the step itself
    text = (
        f"{name}: largest step {steps[k]:.1f} of a {rise:.1f}-point rise (from {k} to {k + 1} blocks removed; {spread})"
    )
    limit = STEEPEST * rise
    if abs(steps[k] - limit) <= noise:
        within = (
            f"within the draws' noise of the limit {limit:.1f} ({NOISE:g} standard errors = {noise:.1f}; more --draws)"
        )
        return UNDECIDED, f"{text}: {within}"
    return (AGREES if steps[k] < limit else DISAGREES), text


def errors_at(record: dict, k: int) -> list[float]:
    return [] if k == 0 else record["by_k"][k] if k in record["by_k"] else record["by_k"][str(k)]


def is_exact(record: dict, k: int) -> bool:
    """Whether every set of k removed blocks was evaluated (k = 0: the intact net)."""
    return k == 0 or k in record.get("exact", ()) or str(k) in map(str, record.get("exact", ()))


def standard_error(record: dict, k: int) -> float:
    """Of the mean error with k blocks removed: 0 where it is exact, over the draws otherwise
    (one draw: unknown, taken as infinite)."""
    errors = errors_at(record, k)
    if is_exact(record, k):
        return 0.0
    return statistics.stdev(errors) / math.sqrt(len(errors)) if len(errors) > 1 else math.inf


def draws_spread(record: dict, k: int) -> str:
    """How well the mean error with k blocks removed is known: exact (every set evaluated) or the
    standard error over its draws."""
    errors = errors_at(record, k)
    if is_exact(record, k):
        return f"exact over all {len(errors)} sets"
    if len(errors) < 2:
        return "one draw"
    return f"{len(errors)} draws, standard error {standard_error(record, k):.1f}"


def verdicts(records: list[dict]) -> list[Verdict]:
    """Veit et al.'s claims, about trained nets: decided on the nets trained to convergence."""
    return on_trained(records, decide)


def decide(records: list[dict]) -> list[Verdict]:
    out = []
    for mode, claim in (
        ("residual", "removing one block of a residual net (not a downsampling one) barely changes the error"),
        ("plain", "removing any block of a plain net sends the error to chance"),
    ):
        mine = [single_block(r) for r in records if r["mode"] == mode]
        if not mine:
            continue
        criterion = (
            f"every such block at most {SMALL:g} points"
            if mode == "residual"
            else f"every block at least {HALFWAY:g} of the way to chance"
        )
        numbers = "; ".join(text for _, text in mine)
        why = f"test error intact -> with one block removed: {numbers}; criterion: {criterion}"
        of_mode = [r for r in records if r["mode"] == mode]
        out.append(Verdict(claim, "Veit et al. 2016, Fig. 3", overall(o for o, _ in mine), why, judged_on(of_mode)))
    mine = [smoothness(r) for r in records if r["mode"] == "residual"]
    if mine:
        why = "; ".join(text for _, text in mine) + f"; criterion: no step above {STEEPEST:g} of the whole rise"
        claim = "the error of a residual net rises smoothly with the number of blocks removed"
        residual = [r for r in records if r["mode"] == "residual"]
        out.append(Verdict(claim, "Veit et al. 2016, Fig. 5", overall(o for o, _ in mine), why, judged_on(residual)))
    return out


def figure(nets: list[Subject], records: list[dict]):
    plt = pyplot()
    colour = colour_of(nets)
    fig, (single, many) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in records:
        c = colour[r["net"]]
        label = f"{r['net']} s{r['seed']}"
        errors = [math.nan if e is None else e for e in r["single"]]  # gaps where a block is not removable
        single.plot(range(1, len(errors) + 1), errors, "o-", color=c, ms=3, lw=1, label=label)
        single.axhline(r["intact"], color=c, ls=":", lw=1)
        ks = sorted(r["by_k"], key=int)
        means = [statistics.fmean(r["by_k"][k]) for k in ks]
        many.plot([int(k) for k in ks], means, color=c, lw=1.5, label=label)
        many.fill_between(
            [int(k) for k in ks],
            [min(r["by_k"][k]) for k in ks],
            [max(r["by_k"][k]) for k in ks],
            color=c,
            alpha=0.15,
            lw=0,
        )
    chance = records[0]["chance"]
    for ax in (single, many):
        ax.axhline(chance, color="grey", ls="--", lw=1)
        ax.set_ylabel("test error (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    single.set(
        xlabel="block removed (dotted: intact; gaps: not removable)", title="one block removed (Veit et al. Fig. 3)"
    )
    many.set(
        xlabel="blocks removed at random", title="k blocks removed (Veit et al. Fig. 5; band: min to max of draws)"
    )
    single.legend(fontsize=7)
    fig.tight_layout()
    return fig
