"""Learning-rate schedules in iterations: the paper's multistep, plateau decay, ResNet-110 warm-up."""

import pytest

from resexp.config import ScheduleConfig, ScheduleName
from resexp.run.schedule import Schedule


def test_multistep_divides_by_ten_at_32k_and_48k():
    s = Schedule(0.1, ScheduleConfig())
    assert [s.lr(i) for i in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_warmup_holds_0_01_until_training_error_is_below_80_percent():
    s = Schedule(0.1, ScheduleConfig(warmup_lr=0.01))
    assert s.lr(0) == 0.01
    s.observe({"train/error": 85.0, "test/error": 90.0})
    assert s.lr(400) == 0.01
    s.observe({"train/error": 79.0, "test/error": 80.0})
    assert s.lr(401) == 0.1 and s.lr(32000) == pytest.approx(0.01)


def test_plateau_divides_after_patience_and_stops_at_the_floor():
    s = Schedule(0.1, ScheduleConfig(name=ScheduleName.plateau, patience=2, min_delta=0.5, min_lr=0.001))
    errors = [
        50,
        40,
        39.8,
        39.9,  # no gain above min_delta for 2 evaluations -> 0.01
        30,
        30,
        30,  # -> 0.001 (the floor)
        30,
        30,
        30,
        30,
    ]  # stays at the floor
    lrs = []
    for e in errors:
        s.observe({"train/error": e, "test/error": e})
        lrs.append(s.lr(0))
    assert lrs[:4] == pytest.approx([0.1, 0.1, 0.1, 0.01])
    assert lrs[4:7] == pytest.approx([0.01, 0.01, 0.001])
    assert lrs[7:] == pytest.approx([0.001] * 4)


def test_state_dict_round_trip_continues_identically():
    cfg = ScheduleConfig(name=ScheduleName.plateau, patience=1, warmup_lr=0.01)
    a = Schedule(0.1, cfg)
    for e in (90, 70, 60, 60):
        a.observe({"train/error": e, "test/error": e})
    b = Schedule(0.1, cfg)
    b.load_state_dict(a.state_dict())
    for e in (60, 60, 50):
        a.observe({"train/error": e, "test/error": e})
        b.observe({"train/error": e, "test/error": e})
        assert a.lr(0) == b.lr(0)


def test_milestones_left_out_are_half_and_three_quarters_of_any_schedule():
    s = Schedule(0.1, ScheduleConfig(iterations=400))
    assert [s.lr(i) for i in (0, 199, 200, 299, 300, 399)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert Schedule(0.1, ScheduleConfig(iterations=400, milestones=[100])).lr(150) == pytest.approx(0.01)
