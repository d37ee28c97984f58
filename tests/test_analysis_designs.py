"""Property: every design the config accepts (mode, norm, init, block, body, shortcut) gives, in
every analysis, at initialisation and after a few iterations, verdicts that agree, do not, or
cannot decide, each saying what it was judged on, and never a crash (before: Fixup's zero
classifier divided by zero in `gradients`). Tiny nets on synthetic images, driven in-process
through the driver's `measured` (each kind as resexp.analysis.protocol describes it)."""

import dataclasses
import itertools
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resexp import identity
from resexp.analysis.convergence import INITIALISED, PARTIAL, TrainingState
from resexp.analysis.driver import KINDS, measured
from resexp.analysis.protocol import Options, pyplot
from resexp.analysis.subjects import Subject, named
from resexp.analysis.verdict import OUTCOMES
from resexp.config import Config, DataConfig, ModelConfig, design, to_object
from resexp.data import build_data
from resexp.device import seed_everything
from resexp.errors import ConfigError
from resexp.nets.build import build_model
from resexp.rundir.experiments import jsonable
from resexp.rundir.read import Run

DEVICE = torch.device("cpu")
if not os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # tiny nets: one thread is fastest (under xdist conftest has set it already)


def accepted() -> list[ModelConfig]:
    """Every CIFAR design the config's rules accept, at the smallest depth of its body."""
    out = []
    for mode, norm, init, block, body, shortcut in itertools.product(
        ("plain", "residual"),
        ("batch", "none"),
        ("he", "xavier", "zero_gamma", "skipinit", "fixup"),
        ("post", "pre"),
        ("basic", "bottleneck"),
        ("A", "B", "C"),
    ):
        depth = 11 if body == "bottleneck" else 8
        m = ModelConfig(depth=depth, mode=mode, norm=norm, init=init, block=block, body=body, shortcut=shortcut)
        try:
            design(m)
        except ConfigError:
            continue
        if mode == "plain" and shortcut != "A":  # a plain net has no shortcut: one of them is enough
            continue
        out.append(m)
    return out


DESIGNS = accepted()
DATA = DataConfig(name="synthetic", train_size=32, test_size=16, batch_size=16, image_size=16)
SHARED = build_data(DATA, 0, DEVICE)


def subject(m: ModelConfig, trained: bool) -> Subject:
    """The design's net at initialisation, or after a few SGD steps on its first batch."""
    from omegaconf import OmegaConf

    cfg = to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.structured(Config(model=m, data=DATA))))
    cfg.optim.lr = 0.05
    seed_everything(0)
    model = build_model(cfg, SHARED.num_classes).to(DEVICE)
    training = TrainingState(INITIALISED, "at initialisation")
    if trained:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=0.9)
        x, y = next(iter(SHARED.train.batches(0)))
        model.train()
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        training = TrainingState(PARTIAL, "trained 3 iterations: not converged", 3)
    run = Run(path=Path(tempfile.mkdtemp(prefix="resexp-design-")) / "run", identity=identity.of(cfg))
    return Subject(run, cfg, model.eval(), SHARED, DEVICE, training.kind, training)


def analysed(m: ModelConfig, trained: bool, kinds: tuple[str, ...] = KINDS) -> None:
    """Every analysis of `kinds` on the design's net: verdicts of the three outcomes, each saying
    what it was judged on, numbers that JSON can hold, and a figure."""
    [net] = named([subject(m, trained)])
    options = Options(at_init=not trained, images=8, grid=3, draws=2)
    for kind in kinds:
        base = Path(tempfile.mkdtemp(prefix="resexp-analysis-")) / kind
        result = measured(kind, [net], options, base, lambda text: None)
        pyplot().close(result.figure)
        assert result.verdicts, (kind, m)
        for verdict in result.verdicts:
            assert verdict.outcome in OUTCOMES and verdict.why and verdict.judged_on, (kind, m, verdict)
            assert f"norm={m.norm}, init={m.init}, block={m.block}, body={m.body or 'basic'}" in verdict.judged_on
        json.dumps(jsonable([dataclasses.asdict(v) for v in result.verdicts] + result.records))


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.sampled_from(DESIGNS))
def test_every_design_gives_a_verdict_or_cannot_decide_in_every_analysis(m):
    for trained in (False, True):
        analysed(m, trained)


def test_the_design_space_is_the_one_the_config_accepts():
    assert len(DESIGNS) == 88  # plain 16, residual with He or Xavier 48, zero_gamma 6, SkipInit 12, Fixup 6
    assert not any(m.init == "zero_gamma" and m.block == "pre" for m in DESIGNS)
    assert {m.init for m in DESIGNS} == {"he", "xavier", "zero_gamma", "skipinit", "fixup"}


@pytest.mark.parametrize("init", ["fixup", "skipinit", "zero_gamma"])
def test_the_designs_started_at_zero_in_every_analysis_every_time(init):
    """The cases the property may not draw, every time: a branch that starts at zero (Fixup's
    classifier too), at initialisation and after a few iterations, every analysis but the
    landscape (which no design can crash: it only evaluates the loss)."""
    m = ModelConfig(depth=8, mode="residual", norm="batch" if init == "zero_gamma" else "none", init=init)
    for trained in (False, True):
        analysed(m, trained, ("responses", "gradients", "lesion", "signal"))
