"""The analyses' verdicts can say no: each paper's claim held to a stated criterion, on constructed
cases where it is known to hold, to fail, and to be undecidable."""

import math

import numpy as np
import pytest
import torch

from resexp.analysis import gradients, landscape, lesion, responses
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED, overall
from resexp.models import build_net


def test_overall_needs_every_case_to_agree_and_one_counter_example_to_disagree():
    assert overall([AGREES, AGREES]) == AGREES
    assert overall([AGREES, DISAGREES, UNDECIDED]) == DISAGREES
    assert overall([AGREES, UNDECIDED]) == UNDECIDED and overall([]) == UNDECIDED


# --------------------------------------------------------------------------- gradients (He et al. Sec. 4.1)


def planted(factor: float | None):
    """plain-8 whose gradient is multiplied by `factor` where it enters the second stage: every
    layer before it sees its gradient scaled (a planted exploding or vanishing layer)."""
    torch.manual_seed(0)
    net = build_net("cifar", 8, "plain", "A", 10)
    if factor is not None:
        net.stages[1].register_full_backward_hook(
            lambda module, grad_in, grad_out: tuple(None if g is None else g * factor for g in grad_in)
        )
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    g = gradients.gradient_norms(net, x, y)
    return {"net": "plain-8", "seed": 0, "at": "checkpoint", "first_to_last": g["weight_rms"][0] / g["weight_rms"][-1]}


@pytest.mark.parametrize(
    ("factor", "outcome", "word"),
    [(None, AGREES, "healthy"), (1e4, DISAGREES, "explodes"), (1e-4, DISAGREES, "vanishes")],
)
def test_gradients_healthy_only_within_a_bounded_factor_both_ways(factor, outcome, word):
    """Before: only a ratio below 0.01 failed the claim, so an explosion of 10^7 "agreed"."""
    [verdict] = gradients.verdicts([planted(factor)])
    assert verdict.outcome == outcome and f"({word})" in verdict.why, verdict


def test_a_gradient_that_cannot_be_measured_cannot_decide():
    zero = {"net": "plain-8", "seed": 0, "at": "init", "first_to_last": math.inf}  # the last layer's gradient is 0
    [verdict] = gradients.verdicts([zero])
    assert verdict.outcome == UNDECIDED and "at initialisation" in verdict.claim


# --------------------------------------------------------------------------- lesion (Veit et al. 2016)


def record(mode, intact, single, by_k=None, downsampling=(), chance=90.0):
    return {
        "net": f"{mode}-20",
        "seed": 0,
        "mode": mode,
        "intact": intact,
        "single": single,
        "by_k": by_k or {1: [intact]},
        "downsampling": list(downsampling),
        "chance": chance,
    }


def outcome_of(records, claim_word):
    return next(v for v in lesion.verdicts(records) if claim_word in v.claim).outcome


def test_lesion_residual_judges_every_block_not_the_median():
    mild = record("residual", 10.0, [11.0, 12.0, 40.0, 13.0], downsampling=[2])  # 40: a downsampling block
    assert outcome_of([mild], "barely changes") == AGREES
    catastrophic = record("residual", 58.9, [79.1, 60.0, 59.5, 60.1, 59.0])  # the median would hide block 1
    assert outcome_of([catastrophic], "barely changes") == DISAGREES
    untrained = record("residual", 85.0, [86.0, 88.0])
    assert outcome_of([untrained], "barely changes") == UNDECIDED


def test_lesion_plain_is_judged_against_the_intact_net_and_chance():
    to_chance = record("plain", 20.0, [None, 88.0, 89.5, None, 86.0])
    assert outcome_of([to_chance], "sends the error to chance") == AGREES
    under_trained = record("plain", 85.5, [None, 87.9, 88.0])  # before: "sent to chance" (median >= 76.5)
    assert outcome_of([under_trained], "sends the error to chance") == UNDECIDED
    barely = record("plain", 40.0, [None, 50.0, 70.0])  # 50 is not halfway from 40 to 90
    assert outcome_of([barely], "sends the error to chance") == DISAGREES


def test_lesion_smoothness_is_tested_on_the_curve_against_k():
    smooth = record("residual", 10.0, [12.0] * 8, by_k={k: [10.0 + 8 * k] for k in range(1, 9)})
    assert outcome_of([smooth], "smoothly") == AGREES
    cliff = record("residual", 10.0, [12.0] * 8, by_k={k: [11.0 if k < 5 else 88.0] for k in range(1, 9)})
    assert outcome_of([cliff], "smoothly") == DISAGREES
    short = record("residual", 10.0, [12.0] * 3, by_k={k: [10.0 + 20 * k] for k in range(1, 4)})
    assert outcome_of([short], "smoothly") == UNDECIDED  # three blocks make no curve


# --------------------------------------------------------------------------- landscape (Li et al. 2018)

A, B = np.meshgrid(np.linspace(-1, 1, 21), np.linspace(-1, 1, 21))
BOWL = 2 * (A**2 + B**2)
BUMPY = BOWL + 0.5 * np.cos(12 * A) * np.cos(12 * B)


def surface(mode, loss):
    return {"net": f"{mode}-56", "mode": mode, "depth": 56, "seed": 0, **landscape.shape_of(loss)}


def test_a_bowl_is_convex_and_a_bumpy_basin_is_not():
    bowl = landscape.shape_of(BOWL)
    assert bowl["nonconvex_share"] == 0 and bowl["local_minima"] == 1 and bowl["basin_points"] == 21 * 21
    bumpy = landscape.shape_of(BUMPY)
    assert bumpy["nonconvex_share"] > 0.2 and bumpy["local_minima"] > 3
    saddle = landscape.shape_of(A**2 - B**2 + 5)
    assert saddle["nonconvex_share"] == 1  # negative curvature everywhere, |lambda_min / lambda_max| = 1


@pytest.mark.parametrize(
    ("residual", "plain", "outcome"),
    [
        (BOWL, BUMPY, AGREES),
        (BUMPY, BOWL, DISAGREES),
        (BOWL, 20 * BOWL, AGREES),  # as convex, and flatter: a wider basin
        (BOWL, BOWL, UNDECIDED),  # no difference at this resolution
        (np.where(A**2 + B**2 < 0.02, A**2 + B**2, 1e6), BUMPY, UNDECIDED),  # a basin too small to measure
    ],
)
def test_landscape_verdict(residual, plain, outcome):
    """Before: local minima were counted, so a perfect bowl (1) lost to a basin too narrow to
    measure (0), and a surface exploding to 3.8e9 'did not agree'."""
    [verdict] = landscape.verdicts([surface("residual", residual), surface("plain", plain)])
    assert verdict.outcome == outcome, verdict


def test_an_exploding_surface_is_judged_on_its_basin():
    exploding = landscape.shape_of(np.where(A**2 + B**2 < 0.25, A**2 + B**2, 3.8e9))
    assert exploding["basin_points"] < 21 * 21 and exploding["nonconvex_share"] == 0


# --------------------------------------------------------------------------- responses (He et al. Fig. 7)


def group(mode, depth, medians):
    return [{"net": f"{mode}-{depth}", "mode": mode, "depth": depth, "shortcut": "A", "median": m} for m in medians]


def test_responses_count_a_gap_only_beyond_the_seeds_noise():
    clear = {"ResNet-20": group("residual", 20, [0.50, 0.52, 0.51]), "plain-20": group("plain", 20, [0.9, 0.95, 0.92])}
    [pairs, deeper] = responses.verdicts(clear)
    assert pairs.outcome == AGREES and deeper.outcome == UNDECIDED  # one residual depth: nothing to compare
    noisy = {"ResNet-20": group("residual", 20, [0.5, 0.9]), "plain-20": group("plain", 20, [0.6, 0.7])}
    assert responses.verdicts(noisy)[0].outcome == UNDECIDED
    one_seed = {"ResNet-20": group("residual", 20, [0.5]), "plain-20": group("plain", 20, [0.9])}
    assert (
        responses.verdicts(one_seed)[0].outcome == UNDECIDED and "noise unknown" in responses.verdicts(one_seed)[0].why
    )
    against = {
        "ResNet-20": group("residual", 20, [0.5, 0.51]),
        "ResNet-56": group("residual", 56, [0.8, 0.81]),
        "plain-20": group("plain", 20, [0.9, 0.91]),
    }
    assert responses.verdicts(against)[1].outcome == DISAGREES  # the deeper residual net responds more


def test_responses_per_channel_average_the_channels_stds():
    torch.manual_seed(0)
    net = build_net("cifar", 8, "residual", "A", 10).eval()
    x = torch.randn(16, 3, 32, 32)
    [layer] = responses.response_layers(net)[:1]
    seen = []
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out.detach().double()))
    pooled, _ = responses.responses(net, [(x, None)])
    per_channel, _ = responses.responses(net, [(x, None)], per_channel=True)
    handle.remove()
    out = seen[0]
    assert pooled[0] == pytest.approx(out.std(unbiased=False).item(), rel=1e-9)
    channels = out.transpose(0, 1).flatten(1).std(1, unbiased=False)
    assert per_channel[0] == pytest.approx(channels.mean().item(), rel=1e-9)
