"""Learning-rate schedules counted in iterations (He et al. 2015).

- multistep (Sec. 4.2, CIFAR): lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k
  (by default at 50% and 75% of any other length).
- plateau (Sec. 3.4, ImageNet): divided by 10 when the error plateaus, down to a floor.
- warm-up (Sec. 4.2, ResNet-110): lr 0.01 "until the training error is below 80% (about 400
  iterations), and then go back to 0.1". Checked at each evaluation (by default once per epoch,
  390 iterations on CIFAR-10, which matches the paper's "about 400").

A schedule answers `lr(step)` every iteration (pure arithmetic, no device sync) and hears each
evaluation's metrics through `observe`. Its state_dict goes into checkpoints.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from resexp.config import ScheduleConfig, ScheduleName, milestones_of


class Schedule:
    """Multistep and plateau decay, with an optional warm-up in front of either."""

    def __init__(self, base_lr: float, cfg: ScheduleConfig) -> None:
        self.base_lr = base_lr
        self.kind = cfg.name
        self.milestones = milestones_of(cfg)
        self.gamma = cfg.gamma
        self.iterations = cfg.iterations
        self.monitor, self.patience, self.min_delta, self.min_lr = cfg.monitor, cfg.patience, cfg.min_delta, cfg.min_lr
        self.warmup_lr, self.warmup_until_error = cfg.warmup_lr, cfg.warmup_until_error
        # state
        self.warming_up = cfg.warmup_lr is not None
        self.plateau_lr = base_lr
        self.best = float("inf")
        self.bad_evaluations = 0

    def lr(self, step: int) -> float:
        """The learning rate of iteration `step` (0-based)."""
        if self.warming_up:
            return self.warmup_lr  # type: ignore[return-value]
        if self.kind == ScheduleName.multistep:
            return self.base_lr * self.gamma ** bisect_right(self.milestones, step)
        return self.plateau_lr

    def observe(self, metrics: dict[str, float]) -> None:
        """Hear one evaluation's metrics (errors in %)."""
        if self.warming_up and metrics["train/error"] < self.warmup_until_error:
            self.warming_up = False
        if self.kind != ScheduleName.plateau or self.warming_up:
            return
        value = metrics[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.bad_evaluations = value, 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience and self.plateau_lr > self.min_lr:
            self.plateau_lr = max(self.plateau_lr * self.gamma, self.min_lr)
            self.bad_evaluations = 0
            self.best = value  # measure the next plateau from here

    def state_dict(self) -> dict[str, Any]:
        return {
            "warming_up": self.warming_up,
            "plateau_lr": self.plateau_lr,
            "best": self.best,
            "bad_evaluations": self.bad_evaluations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warming_up = state["warming_up"]
        self.plateau_lr = state["plateau_lr"]
        self.best = state["best"]
        self.bad_evaluations = state["bad_evaluations"]
