"""A verdict: one paper's claim put to the numbers an analysis measured, with a criterion that can
fail, and three outcomes: agrees, does not agree, or cannot decide (too few seeds, a basin too
small to measure, a net not trained enough for the claim to apply). Each analysis module states
its criteria as constants beside the code that applies them; the README lists them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

AGREES, DISAGREES, UNDECIDED = "agrees", "does not agree", "cannot decide"
OUTCOMES = (AGREES, DISAGREES, UNDECIDED)


@dataclass(frozen=True)
class Verdict:
    claim: str  # the claim, in the paper's words where it has them
    source: str  # e.g. "He et al. 2015, Sec. 4.1"
    outcome: str  # AGREES, DISAGREES or UNDECIDED
    why: str  # the numbers, and the criterion they were held to

    def __str__(self) -> str:
        return f"{self.claim} ({self.source}): {self.outcome.upper()}: {self.why}"


def overall(outcomes: Iterable[str]) -> str:
    """One outcome from several (one per net or per pair): any counter-example decides against the
    claim; the claim holds when every case agrees; anything else cannot decide."""
    outcomes = list(outcomes)
    if DISAGREES in outcomes:
        return DISAGREES
    if outcomes and all(o == AGREES for o in outcomes):
        return AGREES
    return UNDECIDED
