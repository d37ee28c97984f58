"""A verdict: one paper's claim put to the numbers an analysis measured, with a criterion that can
fail, and three outcomes: agrees, does not agree, or cannot decide (too few seeds, a basin too
small to measure, a net not trained enough for the claim to apply). Each analysis module states
its criteria as constants beside the code that applies them; the README lists them.

Every verdict says what it was judged on (`judged_on`): the nets' training state (at
initialisation; trained so many iterations, not converged; trained to convergence by
resexp.analysis.convergence's criterion; published) and their design (norm, init, block, body). A claim
about trained nets is decided only on nets trained to convergence (`on_trained`): on others its
numbers are shown, and the verdict cannot decide. A verdict that holds by construction (BN sets
the stream's scale; a branch started at zero is the identity at initialisation) says why in
`construction`, and is shown apart from those that could have failed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from resexp.analysis.convergence import CRITERION
from resexp.analysis.subjects import PAPER_DESIGN

AGREES, DISAGREES, UNDECIDED = "agrees", "does not agree", "cannot decide"
OUTCOMES = (AGREES, DISAGREES, UNDECIDED)
DESIGN_KEYS = ("norm", "init", "block", "body")


@dataclass(frozen=True)
class Verdict:
    claim: str  # the claim, in the paper's words where it has them
    source: str  # e.g. "He et al. 2015, Sec. 4.1"
    outcome: str  # AGREES, DISAGREES or UNDECIDED
    why: str  # the numbers, and the criterion they were held to
    judged_on: str = ""  # the nets' training state and design
    construction: str = ""  # why the outcome could not have been otherwise ("" when it could)

    def __str__(self) -> str:
        label = self.outcome.upper() + (" (by construction)" if self.construction else "")
        text = f"{self.claim} ({self.source}): {label}: {self.why}"
        if self.construction:
            text += f" [by construction: {self.construction}]"
        return text + (f" [judged on: {self.judged_on}]" if self.judged_on else "")


def overall(outcomes: Iterable[str]) -> str:
    """One outcome from several (one per net or per pair): any counter-example decides against the
    claim; the claim holds when every case agrees; anything else cannot decide."""
    outcomes = list(outcomes)
    if DISAGREES in outcomes:
        return DISAGREES
    if outcomes and all(o == AGREES for o in outcomes):
        return AGREES
    return UNDECIDED


def design_text(records: list[dict]) -> str:
    """The nets' design, e.g. "norm=batch, init=he, block=post, body=basic" (a switch on which
    the nets differ lists its values)."""
    parts = []
    for key in DESIGN_KEYS:
        values = sorted({str(r.get("design", {}).get(key, "?")) for r in records})
        parts.append(f"{key}={'|'.join(values)}")
    return ", ".join(parts)


def design_tag(records: list[dict]) -> str:
    """The design's switches that differ from the 2015 nets, e.g. "norm=none, init=xavier" ("" for
    the 2015 nets): what a claim is tagged with when it is judged per design."""
    parts = []
    for key, paper in PAPER_DESIGN.items():
        values = sorted({str(r.get("design", {}).get(key, paper)) for r in records})
        if values != [paper]:
            parts.append(f"{key}={'|'.join(values)}")
    return ", ".join(parts)


def states_text(records: list[dict]) -> str:
    """The nets' training states, each once, e.g. "trained 400 iterations (10 epochs), training
    error 46.0%: not converged (10 epochs, fewer than 100)" (per net when they differ)."""
    texts = [r.get("training", {}).get("text", r.get("state", "?")) for r in records]
    if len(set(texts)) == 1:
        return texts[0]
    return "; ".join(f"{r['net']} s{r['seed']}: {t}" for r, t in zip(records, texts, strict=True))


def judged_on(records: list[dict]) -> str:
    return f"{states_text(records)} | {design_text(records)}"


NET_NAME = re.compile(r"\b(?:plain|ResNet)-\d+\b")


def modes_of(claim: str) -> set[str]:
    """The kinds of net a claim is about, read from its words: "... of a plain net" is about plain
    nets, "shortcuts keep ..." and "... a residual net" about residual ones, a comparison of the two
    ("residual nets respond less than plain nets", "with shortcuts ... than without") and a claim
    about every net (the gradients, the signal) about both."""
    plain = "plain" in claim
    residual = "residual" in claim or claim.startswith("shortcuts")
    if plain and not residual:
        return {"plain"}
    if residual and not plain:
        return {"residual"}
    return {"plain", "residual"}


def with_diverged(verdicts: list[Verdict], diverged: list[dict]) -> list[Verdict]:
    """A run that diverged in training has no weights worth measuring, and every analysis leaves it
    out; but a claim about its design (and about its net, where the claim names nets) is then
    judged without the one run that most likely contradicts it. Each such verdict names the runs
    left out, and one that would agree cannot decide instead."""
    out = []
    for v in verdicts:
        design = v.judged_on.rsplit(" | ", 1)[-1] if " | " in v.judged_on else ""
        switches = dict(part.split("=", 1) for part in design.split(", ") if "=" in part)
        named = set(NET_NAME.findall(v.claim))
        modes = modes_of(v.claim)
        hits = [
            d
            for d in diverged
            if all(d["design"].get(k) in values.split("|") for k, values in switches.items())
            and (d["net"] in named if named else d["mode"] in modes)
        ]
        if not hits:
            out.append(v)
            continue
        left = "; left out, diverged in training: " + ", ".join(f"{d['net']} s{d['seed']} ({d['state']})" for d in hits)
        if v.outcome == AGREES:
            left += ": without them the claim cannot be judged"
        out.append(replace(v, outcome=UNDECIDED if v.outcome == AGREES else v.outcome, why=v.why + left))
    return out


def converged(record: dict) -> bool:
    return bool(record.get("training", {}).get("converged"))


def on_trained(records: list[dict], decide: Callable[[list[dict]], list[Verdict]]) -> list[Verdict]:
    """Verdicts on claims about trained nets: decided on the nets trained to convergence alone
    (the others named as left out). When none is, the same verdicts computed on the nets there
    are, each turned into cannot decide with its numbers kept, so that a 400-iteration sketch or
    a net at initialisation never decides what a trained net does."""
    trained = [r for r in records if converged(r)]
    others = [r for r in records if not converged(r)]
    if trained:
        left = f" (left out, not trained to convergence: {states_text(others)})" if others else ""
        return [replace(v, why=v.why + left, judged_on=v.judged_on or judged_on(trained)) for v in decide(trained)]
    out = []
    for v in decide(records):
        shown = f"on these nets the criterion gives '{v.outcome}': {v.why}"
        out.append(
            replace(
                v,
                outcome=UNDECIDED,
                why=f"the claim is about trained nets, and none here is trained to convergence ({CRITERION}); {shown}",
                judged_on=v.judged_on or judged_on(records),
                construction="",
            )
        )
    return out


def with_judged_on(verdicts: list[Verdict], records: list[dict]) -> list[Verdict]:
    """The verdicts, each saying what it was judged on where it does not yet."""
    return [v if v.judged_on else replace(v, judged_on=judged_on(records)) for v in verdicts]
