"""The training state a net is judged in: freshly initialised, trained for some iterations, or
trained to convergence. Every verdict of `resexp analyze` says on which of these it was decided,
and a claim about trained nets (a learned identity, Fig. 7's responses, lesions, the landscape) is
decided only on nets trained to convergence.

Converged, by resexp's criterion (stated in the README and in every verdict that uses it):
- the run completed its schedule (it did not stop, and did not diverge);
- it trained at least MIN_EPOCHS epochs (the paper's CIFAR schedule is 164 epochs of 50k images,
  akamaster's 200; the 400-iteration sketch of `make demo` is 10);
- its training error stopped moving: the mean of the running training error over the evaluations
  in the last tenth of the schedule is within FLAT points of the mean over the tenth before.

A net imported from a publisher (`resexp import`) has no curves to judge: it counts as trained to
convergence by its publisher's recipe, which its provenance states. Its "initialisation" is a fresh
He initialisation of the same architecture: the published net's own starting point is not
published, and the verdicts say so.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from resexp.rundir.read import Run

MIN_EPOCHS = 100.0  # epochs of the run's own training set


FLAT = 1.0  # points of training error: the mean over the last tenth of the schedule vs the tenth before


TENTH = 0.1  # of the schedule: the window each mean is taken over


INITIALISED, FRESH, PARTIAL, CONVERGED, PUBLISHED = "initialised", "fresh", "trained", "converged", "published"


CRITERION = (
    f"converged = schedule complete, at least {MIN_EPOCHS:g} epochs, and the running training error's mean over "
    f"the last tenth of the schedule within {FLAT:g} point of the tenth before"
)


@dataclass(frozen=True)
class TrainingState:
    """What a net analysed has been through: `kind` is one of INITIALISED (as its run began, or as
    a config builds it), FRESH (a fresh initialisation of an imported net's architecture),
    PARTIAL (trained, not to convergence), CONVERGED, PUBLISHED (imported; converged by its
    publisher's recipe)."""

    kind: str
    text: str  # what a verdict says it was judged on
    iterations: int = 0
    epochs: float | None = None
    train_error: float | None = None  # the last evaluation's running training error, %

    @property
    def converged(self) -> bool:
        return self.kind in (CONVERGED, PUBLISHED)

    @property
    def initialised(self) -> bool:
        return self.kind in (INITIALISED, FRESH)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "converged": self.converged}


def at_init(run: Run | None = None) -> TrainingState:
    """The state of a net freshly initialised: as its run began, or, for an imported net, a fresh
    initialisation of its architecture (not the publisher's starting point)."""
    if run is not None and run.imported:
        return TrainingState(
            FRESH, "a fresh He initialisation of the published net's architecture (not the published net's own start)"
        )
    return TrainingState(INITIALISED, "at initialisation")


def of_run(run: Run, step: int) -> TrainingState:
    """The state of a run's net at its checkpoint of iteration `step`."""
    if run.imported:
        p = run.provenance or {}
        iterations = int(p.get("iterations", 0) or 0)
        return TrainingState(
            PUBLISHED,
            f"published by {p.get('source', '?')}, trained to convergence by its publisher's recipe "
            f"({iterations} iterations; provenance.json says how)",
            iterations=iterations,
        )
    rows = [r for r in run.rows if r["step"] <= step]
    last = rows[-1] if rows else {}
    epochs = last.get("epoch")
    error = last.get("train/error")
    done = f"trained {step} iterations" + (f" ({epochs:.0f} epochs)" if epochs is not None else "")
    done += f", training error {error:.1f}%" if error is not None else ""
    converged, why = convergence(rows, run.iterations, step)
    kind = CONVERGED if converged else PARTIAL
    text = f"{done}: {'converged' if converged else 'not converged'} ({why})"
    return TrainingState(kind, text, step, epochs, error)


def convergence(rows: list[dict[str, Any]], iterations: int, step: int) -> tuple[bool, str]:
    """(converged, why) by the criterion above, from a run's metrics rows up to its checkpoint."""
    if step < iterations or not rows:
        return False, f"stopped at {step} of {iterations} iterations"
    epochs = rows[-1].get("epoch") or 0.0
    if epochs < MIN_EPOCHS:
        return False, f"{epochs:.0f} epochs, fewer than {MIN_EPOCHS:g}"
    window = TENTH * iterations
    last = [r["train/error"] for r in rows if r["step"] > iterations - window]
    before = [r["train/error"] for r in rows if iterations - 2 * window < r["step"] <= iterations - window]
    if not last or not before:
        return False, "too few evaluations to tell: at least one per tenth of the schedule is needed"
    change = statistics.fmean(last) - statistics.fmean(before)
    if abs(change) > FLAT:
        return False, f"training error still moving: {change:+.2f} points over the last tenth of the schedule"
    return True, f"{epochs:.0f} epochs, training error flat: {change:+.2f} points over the last tenth"
