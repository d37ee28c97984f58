"""`resexp analyze paths` (Veit et al. 2016, Fig. 6): the gradient through each single path equals
an independent computation that enumerates every path; the binomial counts; sampling converges to
the enumeration; a net whose long paths dominate makes the verdict say so."""

import itertools
import math
import random
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resexp.analysis import paths
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED
from resexp.nets.blocks import Block, Net, basic_body, make_head, make_shortcut, make_stem
from resexp.nets.build import build_net

CONVERGED = {"kind": "converged", "converged": True, "text": "converged"}
PAPER = {"norm": "batch", "init": "he", "block": "post", "body": "basic"}


def two_blocks() -> Net:
    """A residual net of exactly two blocks (16 -> 16, then 16 -> 32 with option A)."""
    torch.manual_seed(0)
    stem, width = make_stem("cifar")
    blocks = [
        Block(basic_body(16, 16, 1), make_shortcut("A", 16, 16, 1)),
        Block(basic_body(16, 32, 2), make_shortcut("A", 16, 32, 2)),
    ]
    return Net(stem, nn.Sequential(nn.Sequential(*blocks)), make_head(32, 10))


def by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chosen: set[int]) -> float:
    """The gradient at the stem's output through one path, computed another way: every block's
    output keeps its value, and detach() takes out of the backward pass the part the path skips."""
    net = __import__("copy").deepcopy(model).train()
    stream = net.stem(x).detach().requires_grad_(True)
    h, i = stream, 0
    for stage in net.stages:
        for block in stage:
            branch, shortcut = block.body(h), block.shortcut(h)
            if i in chosen:
                out = branch + shortcut.detach()
            else:
                out = branch.detach() + shortcut
            h, i = F.relu(out), i + 1
    loss = F.cross_entropy(net.head(h), y)
    (grad,) = torch.autograd.grad(loss, stream)
    return float(grad.norm())


@pytest.mark.parametrize(
    "net", [two_blocks, lambda: build_net("cifar", 8, "residual", "A", 10)], ids=["2 blocks", "3 blocks"]
)
def test_each_path_length_carries_what_an_enumeration_of_every_path_computes(net):
    torch.manual_seed(1)
    model = net()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    found = paths.path_gradients(model, x, y, samples=100, seed=0)  # more samples than paths: every path, exactly
    n = found["blocks"]
    assert n == (2 if net is two_blocks else 3) and all(found["exact"])
    for k in range(n + 1):
        hand = statistics.fmean(by_hand(model, x, y, set(s)) for s in itertools.combinations(range(n), k))
        assert found["per_path"][k] == pytest.approx(hand, rel=1e-5), k
    assert found["counts"] == [math.comb(n, k) for k in range(n + 1)]
    assert found["total"] == pytest.approx([c * g for c, g in zip(found["counts"], found["per_path"], strict=True)])
    # every path together: the net's own gradient at the stem is the sum of the paths' (vectors)
    assert sum(found["counts"]) == 2**n


def test_sampling_converges_to_the_enumeration():
    torch.manual_seed(2)
    model = build_net("cifar", 14, "residual", "A", 10)  # 6 blocks, C(6, 3) = 20 paths of length 3
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    exact = paths.path_gradients(model, x, y, samples=20, seed=0)["per_path"][3]
    errors = []
    for samples in (2, 5, 10):
        estimates = [paths.path_gradients(model, x, y, samples=samples, seed=s)["per_path"][3] for s in range(6)]
        errors.append(statistics.fmean(abs(e - exact) for e in estimates))
    assert errors[0] > errors[2] and paths.path_gradients(model, x, y, samples=20, seed=5)["per_path"][3] == exact
    sets = paths.path_sets(6, 3, 7, random.Random(0))
    assert len(set(sets)) == 7 and all(len(s) == 3 for s in sets)  # different sets, never one twice


def record(found: dict, mode: str = "residual") -> dict:
    r = {"net": "ResNet-14", "seed": 0, "mode": mode, "training": CONVERGED, "design": PAPER, **found}
    return {**r, **paths.shares(r)}


def test_a_net_whose_long_paths_dominate_does_not_agree_and_one_whose_short_paths_do_agrees():
    torch.manual_seed(3)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    quiet = build_net("cifar", 26, "residual", "A", 10)  # 12 blocks
    loud = build_net("cifar", 26, "residual", "A", 10)
    for block in (m for m in quiet.modules() if isinstance(m, Block)):
        block.body[-1].weight.data.fill_(0.1)  # each branch small: a path shrinks with every branch it takes
    for block in (m for m in loud.modules() if isinstance(m, Block)):
        block.body[-1].weight.data.fill_(5.0)  # each branch loud: a path grows with every branch it takes
    short = record(paths.path_gradients(quiet, x, y, samples=8, seed=0))
    long = record(paths.path_gradients(loud, x, y, samples=8, seed=0))
    assert short["short_share"] > paths.SHORT_SHARE > long["short_share"]
    assert paths.verdicts([short])[0].outcome == AGREES
    assert paths.verdicts([long])[0].outcome == DISAGREES
    low, high = long["effective"]
    assert high > 12 / 2 and 0 <= low <= high <= 12


def test_what_cannot_be_decided():
    plain = {**record({"blocks": 0, "counts": [1], "per_path": [], "total": [], "exact": []}, mode="plain")}
    assert paths.verdicts([plain])[0].outcome == UNDECIDED and "one path" in paths.verdicts([plain])[0].why
    torch.manual_seed(4)
    fixup = build_net("cifar", 14, "residual", "A", 10, norm="none", init="fixup")  # zero classifier: no gradient
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    silent = record(paths.path_gradients(fixup, x, y, samples=4, seed=0))
    assert silent["short_share"] is None and paths.verdicts([silent])[0].outcome == UNDECIDED
    sketch = {**record(paths.path_gradients(build_net("cifar", 14, "residual", "A", 10), x, y, 4, 0))}
    sketch["training"] = {"kind": "trained", "converged": False, "text": "trained 400 iterations: not converged"}
    [verdict] = paths.verdicts([sketch])
    assert verdict.outcome == UNDECIDED and "criterion gives" in verdict.why  # a claim about trained nets
