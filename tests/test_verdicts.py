"""The analyses' verdicts can say no: each paper's claim held to a stated criterion, on constructed
cases where it is known to hold, to fail, and to be undecidable."""

import math

import numpy as np
import pytest
import torch

from resexp.analysis import gradients, landscape, lesion, responses, signal
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED, Verdict, judged_on, on_trained, overall, with_diverged
from resexp.nets.build import build_net


def test_overall_needs_every_case_to_agree_and_one_counter_example_to_disagree():
    assert overall([AGREES, AGREES]) == AGREES
    assert overall([AGREES, DISAGREES, UNDECIDED]) == DISAGREES
    assert overall([AGREES, UNDECIDED]) == UNDECIDED and overall([]) == UNDECIDED


# --------------------------------------------------------------------------- what a verdict is judged on

PAPER = {"norm": "batch", "init": "he", "block": "post", "body": "basic"}
CONVERGED = {"kind": "converged", "converged": True, "text": "trained 10400 iterations (160 epochs): converged"}
SKETCH = {"kind": "trained", "converged": False, "text": "trained 400 iterations (10 epochs): not converged"}
AT_INIT = {"kind": "initialised", "converged": False, "text": "at initialisation"}


def about(net: str, mode: str, training: dict = CONVERGED, depth: int = 20, seed: int = 0, **design) -> dict:
    """What an analysis records of the net it measured, besides its numbers."""
    return {"net": net, "seed": seed, "mode": mode, "depth": depth, "shortcut": "A", "settings": "-"} | {
        "training": training,
        "design": PAPER | design,
    }


def test_a_claim_judged_without_a_diverged_run_of_its_design_cannot_agree():
    # runs/why_init's sketch: ResNet-56 without BN (He init) diverged in every seed and is left out; the
    # claim about shortcuts in that design, judged on ResNet-20 alone, must not read "agrees".
    nobn = [about("ResNet-20", "residual", SKETCH, norm="none"), about("plain-20", "plain", SKETCH, norm="none")]
    paper = [about("ResNet-20", "residual", SKETCH)]
    left = [
        {
            "net": "ResNet-56",
            "mode": "residual",
            "seed": s,
            "design": PAPER | {"norm": "none"},
            "state": "diverged at 40",
        }
        for s in (0, 1)
    ]
    shortcuts = Verdict(
        "shortcuts keep the gradient healthy [norm=none]", "lectures", AGREES, "ResNet-20 4.1", judged_on(nobn)
    )
    plain20 = Verdict("in plain-20 the gradient vanishes [norm=none]", "lectures", DISAGREES, "6.0", judged_on(nobn))
    against = Verdict("the forward signal keeps its scale [norm=none]", "lectures", DISAGREES, "3e3", judged_on(nobn))
    bn = Verdict("shortcuts keep the gradient healthy", "lectures", AGREES, "ResNet-20 9.6", judged_on(paper))
    out = with_diverged([shortcuts, plain20, against, bn], left)
    assert out[0].outcome == UNDECIDED
    assert "left out, diverged in training: ResNet-56 s0 (diverged at 40), ResNet-56 s1 (diverged at 40)" in out[0].why
    assert out[1] == plain20  # a claim about another net of the design
    assert out[2].outcome == DISAGREES and "ResNet-56 s0" in out[2].why  # a counter-example stays one
    assert out[3] == bn  # another design
    assert with_diverged([shortcuts], []) == [shortcuts]
    # A claim about the other kind of net is not judged without it: a diverged ResNet leaves the plain claim
    # as it was, a diverged plain net leaves the residual one; a comparison of the two is touched by either.
    plain = Verdict("removing any block of a plain net sends the error to chance", "Veit", AGREES, "", judged_on(nobn))
    both = Verdict("with shortcuts the surface is smoother than without", "Li", AGREES, "", judged_on(nobn))
    assert with_diverged([plain], left) == [plain] and with_diverged([both], left)[0].outcome == UNDECIDED
    diverged_plain = [left[0] | {"net": "plain-56", "mode": "plain"}]
    assert with_diverged([shortcuts], diverged_plain) == [shortcuts]
    assert with_diverged([plain], diverged_plain)[0].outcome == UNDECIDED


def test_a_claim_about_trained_nets_cannot_be_decided_on_a_sketch_and_keeps_its_numbers():
    def decide(records):
        return [Verdict("claim", "paper", AGREES, f"{len(records)} nets: 0.3", judged_on(records))]

    trained, sketch = about("ResNet-56", "residual"), about("ResNet-20", "residual", SKETCH)
    [only_sketch] = on_trained([sketch], decide)
    assert only_sketch.outcome == UNDECIDED and "criterion gives 'agrees': 1 nets: 0.3" in only_sketch.why
    assert "not converged" in only_sketch.judged_on and "none here is trained to convergence" in only_sketch.why
    [mixed] = on_trained([trained, sketch], decide)
    assert mixed.outcome == AGREES and mixed.why.startswith("1 nets") and "left out" in mixed.why
    assert "converged" in mixed.judged_on and "norm=batch, init=he, block=post, body=basic" in mixed.judged_on


# --------------------------------------------------------------------------- gradients (He et al. Sec. 4.1)


def planted(factor: float | None, where: str = "stage", depth: int = 8, **design) -> dict:
    """plain-8 whose gradient is multiplied by `factor` where it enters the second stage (every
    layer before it sees its gradient scaled: a planted exploding or vanishing layer), or where it
    enters the head (every layer's gradient scaled alike: vanished or exploded everywhere)."""
    torch.manual_seed(0)
    net = build_net("cifar", depth, "plain", "A", 10, **design)
    if factor is not None:
        module = net.stages[1] if where == "stage" else net.head
        module.register_full_backward_hook(
            lambda module, grad_in, grad_out: tuple(None if g is None else g * factor for g in grad_in)
        )
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    g = gradients.gradient_norms(net, x, y, lr=0.1)
    return gradients.measured(about("plain-8", "plain", **design) | {"at": "checkpoint"}, g)


@pytest.mark.parametrize(
    ("factor", "where", "outcome", "flow"),
    [
        (None, "stage", AGREES, "healthy"),
        (30, "stage", DISAGREES, "explodes"),  # toward the input, though no step is yet too large
        (1e-4, "stage", DISAGREES, "vanishes"),
        (1e-9, "head", DISAGREES, "vanished"),  # every layer 1e-9 of itself: the ratio alone says healthy
        (1e5, "head", DISAGREES, "exploded"),
    ],
)
def test_gradients_are_judged_on_scale_and_on_the_ratio(factor, where, outcome, flow):
    """Before: the first / last ratio alone, so a gradient that vanished in every layer (plain-110
    without BN, Xavier init: every layer 1e-20) was "healthy"."""
    record = planted(factor, where)
    [verdict] = gradients.verdicts([record])
    assert record["flow"] == flow and verdict.outcome == outcome and f"plain-8 s0 {flow} (" in verdict.why, verdict
    if where == "head":
        assert 0.01 < record["first_to_last"] < 100  # the ratio cannot see it


def test_gradients_are_judged_per_design_and_bn_is_claimed_for_bn_nets_only():
    bn, none = planted(None), planted(None, norm="none", init="xavier")
    verdicts = gradients.verdicts([bn, none])
    assert [v.claim for v in verdicts] == [
        "with BN the gradients keep healthy norms, at the checkpoint",
        "the gradients keep healthy norms [norm=none, init=xavier], at the checkpoint",
    ]
    assert "norm=none" in verdicts[1].judged_on and "norm=batch" in verdicts[0].judged_on


def test_a_real_vanished_gradient_plain_56_without_bn_with_xavier_init():
    torch.manual_seed(0)
    net = build_net("cifar", 56, "plain", "A", 10, norm="none", init="xavier")
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    record = gradients.measured(
        about("plain-56", "plain", AT_INIT) | {"at": "init"}, gradients.gradient_norms(net, x, y, 0.1)
    )
    assert record["flow"] == "vanished" and max(record["update"]) < gradients.VANISHED


def test_fixups_zero_classifier_gives_no_gradient_and_cannot_decide_by_construction():
    """Before: a ZeroDivisionError (`analyze gradients --at-init +experiment=why_fixes`)."""
    torch.manual_seed(0)
    net = build_net("cifar", 8, "residual", "A", 10, norm="none", init="fixup")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    g = gradients.gradient_norms(net, x, y, lr=0.1)
    meta = about("ResNet-8", "residual", AT_INIT, norm="none", init="fixup") | {"at": "init"}
    record = gradients.measured(meta, g)
    [verdict] = gradients.verdicts([record])
    assert record["flow"] == "no gradient" and verdict.outcome == UNDECIDED
    assert "classifier starts at zero" in verdict.construction


def test_nets_started_at_the_identity_cannot_decide_by_construction_at_initialisation_only():
    torch.manual_seed(0)
    net = build_net("cifar", 20, "residual", "A", 10, init="zero_gamma")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    g = gradients.gradient_norms(net, x, y, lr=0.1)
    at_init = gradients.measured(about("ResNet-20", "residual", AT_INIT, init="zero_gamma") | {"at": "init"}, g)
    trained = gradients.measured(about("ResNet-20", "residual", init="zero_gamma") | {"at": "checkpoint"}, g)
    [init_verdict] = gradients.verdicts([at_init])
    [trained_verdict] = gradients.verdicts([trained])
    assert at_init["flow"] == "unmeasurable" and init_verdict.outcome == UNDECIDED
    assert "receive no gradient until it moves" in init_verdict.construction
    assert trained_verdict.outcome == UNDECIDED and trained_verdict.construction == ""  # a trained one could


# --------------------------------------------------------------------------- signal (the lectures' claims)


def test_a_dead_branch_is_dead_not_close_to_the_identity():
    """Pre-activation with zero_gamma (refused by the config now): the zeroed BN scale is followed
    by a ReLU, so no gradient reaches the branch; before, signal judged it "close to the identity"."""
    torch.manual_seed(0)
    net = build_net("cifar", 8, "residual", "B", 10, init="zero_gamma", block="pre")
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    p = signal.propagation(net, x, y)
    assert p["dead"] == [True, True, True] and p["branch_ratio"] == [0.0, 0.0, 0.0]
    record = signal_record(p, about("ResNet-8", "residual", init="zero_gamma", block="pre"))
    verdict = next(v for v in signal.verdicts([record]) if "identity" in v.claim)
    assert verdict.outcome == UNDECIDED and "3 of 3 branches dead" in verdict.why
    healthy = signal.propagation(build_net("cifar", 8, "residual", "A", 10, init="zero_gamma"), x, y)
    assert healthy["dead"] == [False, False, False]  # zero gamma after the branch's last conv: it learns


def signal_record(p: dict, meta: dict, start: float | None = None) -> dict:
    gradient, forward = signal.trend(p["gradient"][0], p["gradient"][-1]), signal.trend(p["std"][-1], p["std"][0])
    return (
        meta
        | p
        | {
            "gradient_ratio": gradient[0],
            "gradient_trend": gradient[1],
            "signal_ratio": forward[0],
            "signal_trend": forward[1],
            "median_branch_ratio": signal.median_ratio(p),
            "initial_median_branch_ratio": start,
            "dead_blocks": sum(bool(d) for d in p["dead"]),
        }
    )


def identity_record(ratios: list[float], training: dict, **design) -> dict:
    p = {"std": [1.0, 1.0], "gradient": [1.0, 1.0], "branch_ratio": ratios, "dead": [False] * len(ratios), "loss": 1}
    return signal_record(p, about("ResNet-56", "residual", training, depth=56, **design), start=0.4)


@pytest.mark.parametrize(
    ("ratios", "training", "outcome"),
    [
        ([0.2, 0.3, 0.4], CONVERGED, AGREES),
        ([0.6, 0.7, 0.4], CONVERGED, DISAGREES),
        ([0.2, 0.3, 0.4], SKETCH, UNDECIDED),  # a sketch never decides what training learns
    ],
)
def test_a_learned_identity_is_decided_on_converged_nets(ratios, training, outcome):
    [verdict] = [v for v in signal.verdicts([identity_record(ratios, training)]) if "learns the identity" in v.claim]
    assert verdict.outcome == outcome and "(at initialisation 0.4)" in verdict.why, verdict
    assert "ResNet-56" in verdict.claim and training["text"] in verdict.judged_on


def test_what_holds_by_construction_says_so():
    at_init = identity_record([0.0, 0.0, 0.0], AT_INIT, init="zero_gamma")
    verdicts = {v.claim.split(" [")[0]: v for v in signal.verdicts([at_init])}
    start = verdicts["each residual block starts close to the identity"]
    assert start.outcome == AGREES and "the last BN scale of each branch starts at zero" in start.construction
    assert "BN's own" in verdicts["the forward signal keeps its scale through the net"].construction
    he = {v.claim.split(" [")[0]: v for v in signal.verdicts([identity_record([0.3], AT_INIT)])}
    assert he["each residual block starts close to the identity"].construction == ""  # He init could have failed
    no_bn = identity_record([0.3], CONVERGED, norm="none", init="fixup")
    assert all(v.construction == "" for v in signal.verdicts([no_bn]))
    assert all("[norm=none, init=fixup]" in v.claim for v in signal.verdicts([no_bn]))


# --------------------------------------------------------------------------- lesion (Veit et al. 2016)


def record(mode, intact, single, by_k=None, downsampling=(), chance=90.0, training=CONVERGED, exact=(1,)):
    return about(f"{mode}-20", mode, training) | {
        "intact": intact,
        "single": single,
        "by_k": by_k or {1: [intact]},
        "exact": list(exact),
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
    sketch = record("residual", 10.0, [11.0, 12.0, 13.0], training=SKETCH)
    assert outcome_of([sketch], "barely changes") == UNDECIDED


def test_lesion_plain_is_judged_against_the_intact_net_and_chance():
    to_chance = record("plain", 20.0, [None, 88.0, 89.5, None, 86.0])
    assert outcome_of([to_chance], "sends the error to chance") == AGREES
    under_trained = record("plain", 85.5, [None, 87.9, 88.0])  # before: "sent to chance" (median >= 76.5)
    assert outcome_of([under_trained], "sends the error to chance") == UNDECIDED
    barely = record("plain", 40.0, [None, 50.0, 70.0])  # 50 is not halfway from 40 to 90
    assert outcome_of([barely], "sends the error to chance") == DISAGREES


def test_lesion_smoothness_is_tested_on_the_curve_against_k():
    every = list(range(1, 9))  # every set evaluated: the curve is exact
    smooth = record("residual", 10.0, [12.0] * 8, by_k={k: [10.0 + 8 * k] for k in every}, exact=every)
    assert outcome_of([smooth], "smoothly") == AGREES
    cliff = record("residual", 10.0, [12.0] * 8, by_k={k: [11.0 if k < 5 else 88.0] for k in every}, exact=every)
    assert outcome_of([cliff], "smoothly") == DISAGREES
    short = record("residual", 10.0, [12.0] * 3, by_k={k: [10.0 + 20 * k] for k in range(1, 4)}, exact=[1, 2, 3])
    assert outcome_of([short], "smoothly") == UNDECIDED  # three blocks make no curve
    # A cliff the draws cannot tell from a slope (akamaster's ResNet-20: 28.3 of 80.0, standard error 11.8)
    noisy = {k: [10.0 + 8 * k] for k in every} | {5: [30.0, 70.0, 50.0], 4: [30.0, 45.0, 40.0]}
    unsure = record("residual", 10.0, [12.0] * 8, by_k=noisy, exact=[1, 2, 3, 6, 7, 8])
    verdict = next(v for v in lesion.verdicts([unsure]) if "smoothly" in v.claim)
    assert (
        verdict.outcome == UNDECIDED
        and "within the draws' noise of the limit 32.0 (2 standard errors = 24.7" in verdict.why
    )


def test_lesion_uses_every_single_removal_and_never_draws_one_set_twice():
    """Before: k = 1 was three random draws with repeats (on akamaster's ResNet-20 one downsampling
    block twice), though every single removal had been computed."""
    torch.manual_seed(0)
    net = build_net("cifar", 14, "residual", "A", 10).eval()
    batches = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))]
    result = lesion.lesion(net, batches, None, draws=3, seed=0, progress=lambda k, n: None)
    assert result["by_k"][1] == result["single"]  # all six single removals: the mean is exact
    assert result["exact"] == [1, 6]  # C(6, 6) = 1 set; C(6, 5) = 6 > 3 draws
    rng = __import__("random").Random(0)
    for k in range(1, 7):
        sets = lesion.removal_sets(list(range(6)), k, 3, rng)
        assert len(set(sets)) == len(sets) == min(3, math.comb(6, k))
    by_k = {1: [12.0] * 6, 2: [14.0, 15.0], 3: [30.0, 31.0], 4: [33.0, 34.0], 5: [36.0, 37.0], 6: [40.0]}
    whole = record("residual", 10.0, [12.0] * 6, by_k=by_k, exact=[1, 6])
    verdict = next(v for v in lesion.verdicts([whole]) if "smoothly" in v.claim)
    assert "from 2 to 3 blocks removed; 2 removed: 2 draws, standard error 0.5; 3 removed: 2 draws" in verdict.why
    steep_start = record("residual", 10.0, [12.0] * 6, by_k={**by_k, 1: [28.0] * 6}, exact=[1, 6])
    verdict = next(v for v in lesion.verdicts([steep_start]) if "smoothly" in v.claim)
    assert "(from 0 to 1 blocks removed; 1 removed: exact over all 6 sets)" in verdict.why, verdict.why


# --------------------------------------------------------------------------- landscape (Li et al. 2018)

A, B = np.meshgrid(np.linspace(-1, 1, 21), np.linspace(-1, 1, 21))
BOWL = 2 * (A**2 + B**2)
BUMPY = BOWL + 0.5 * np.cos(12 * A) * np.cos(12 * B)


def surface(mode, loss, training=CONVERGED):
    return about(f"{mode}-56", mode, training, depth=56) | landscape.shape_of(loss)


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


def test_a_landscape_of_untrained_nets_cannot_decide():
    pair = [surface("residual", BOWL, SKETCH), surface("plain", BUMPY, SKETCH)]
    [verdict] = landscape.verdicts(pair)
    assert verdict.outcome == UNDECIDED and "criterion gives 'agrees'" in verdict.why


def test_an_exploding_surface_is_judged_on_its_basin():
    exploding = landscape.shape_of(np.where(A**2 + B**2 < 0.25, A**2 + B**2, 3.8e9))
    assert exploding["basin_points"] < 21 * 21 and exploding["nonconvex_share"] == 0


# --------------------------------------------------------------------------- responses (He et al. Fig. 7)


def group(mode, depth, medians, training=CONVERGED):
    return [about(f"{mode}-{depth}", mode, training, depth, seed=i) | {"median": m} for i, m in enumerate(medians)]


def flat(groups: dict[str, list[dict]]) -> list[dict]:
    return [record for group in groups.values() for record in group]


def test_responses_count_a_gap_only_beyond_the_seeds_noise():
    clear = {"ResNet-20": group("residual", 20, [0.50, 0.52, 0.51]), "plain-20": group("plain", 20, [0.9, 0.95, 0.92])}
    [pairs, deeper] = responses.verdicts(flat(clear))
    assert pairs.outcome == AGREES and deeper.outcome == UNDECIDED  # one residual depth: nothing to compare
    noisy = {"ResNet-20": group("residual", 20, [0.5, 0.9]), "plain-20": group("plain", 20, [0.6, 0.7])}
    assert responses.verdicts(flat(noisy))[0].outcome == UNDECIDED
    one_seed = {"ResNet-20": group("residual", 20, [0.5]), "plain-20": group("plain", 20, [0.9])}
    assert (
        responses.verdicts(flat(one_seed))[0].outcome == UNDECIDED
        and "noise unknown" in responses.verdicts(flat(one_seed))[0].why
    )
    against = {
        "ResNet-20": group("residual", 20, [0.5, 0.51]),
        "ResNet-56": group("residual", 56, [0.8, 0.81]),
        "plain-20": group("plain", 20, [0.9, 0.91]),
    }
    assert responses.verdicts(flat(against))[1].outcome == DISAGREES  # the deeper residual net responds more
    sketch = {
        "ResNet-20": group("residual", 20, [0.50, 0.52, 0.51], SKETCH),
        "plain-20": group("plain", 20, [0.9, 0.95, 0.92], SKETCH),
    }
    [pairs, _] = responses.verdicts(flat(sketch))
    assert pairs.outcome == UNDECIDED and "criterion gives 'agrees'" in pairs.why  # Fig. 7 is of trained nets


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
