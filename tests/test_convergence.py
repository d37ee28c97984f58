"""resexp's convergence criterion (resexp/convergence.py), which decides whether a claim about
trained nets can be judged on a run: complete, at least 100 epochs, training error flat over the
last tenth of the schedule."""

from resexp.analysis.convergence import MIN_EPOCHS, convergence

ITERATIONS = 10_400  # why_trained: 160 epochs of 65 batches


def curve(final: float, drop: float, epochs_at_end: float = 160.0, every: int = 400) -> list[dict]:
    """Metrics rows every `every` iterations whose training error falls linearly to `final`, by
    `drop` points over the last fifth of the schedule (so `drop / 2` between the last two tenths)."""
    rows = []
    for step in range(every, ITERATIONS + 1, every):
        into_last_fifth = max(0.0, step - 0.8 * ITERATIONS) / (0.2 * ITERATIONS)
        rows.append(
            {
                "step": step,
                "epoch": epochs_at_end * step / ITERATIONS,
                "train/error": final + drop * (1 - into_last_fifth),
            }
        )
    return rows


def test_a_flat_complete_run_of_enough_epochs_is_converged():
    ok, why = convergence(curve(0.6, 0.5), ITERATIONS, ITERATIONS)
    assert ok and why.startswith("160 epochs, training error flat: -0.")


def test_a_training_error_still_falling_is_not_converged():
    ok, why = convergence(curve(5.0, 4.0), ITERATIONS, ITERATIONS)  # about 2 points between the last two tenths
    assert not ok and why.startswith("training error still moving: -")


def test_a_sketch_an_unfinished_run_and_a_sparse_curve_are_not_converged():
    assert convergence(curve(40.0, 0.0, epochs_at_end=10), ITERATIONS, ITERATIONS) == (
        False,
        f"10 epochs, fewer than {MIN_EPOCHS:g}",
    )
    assert convergence(curve(0.6, 0.0)[:10], ITERATIONS, 4000) == (False, "stopped at 4000 of 10400 iterations")
    ok, why = convergence(curve(0.6, 0.0, every=5200), ITERATIONS, ITERATIONS)  # evaluated twice in all
    assert not ok and why.startswith("too few evaluations")
