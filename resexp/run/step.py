"""One training iteration: forward, cross-entropy, backward, SGD update, running sums.

Two ways to run it, one interface (`step(x, y, lr)`), so the loop does not care which:
- EagerStep launches the iteration's kernels one by one from Python.
- GraphedStep (CUDA) records the whole iteration once as a CUDA graph and then replays it. A
  ResNet-56 iteration is about a thousand small kernels; launched one by one from Python, the
  launches, not the GPU, set the pace (about 26 ms per iteration on an H100, benchmarks/NOTES.md).
  The graph reads the batch from fixed buffers, so each iteration copies its batch in and
  replays. The learning rate is a constant inside the graph: when the schedule changes it (twice
  in the paper's schedule), or the batch shape changes, the graph is recorded again. The first
  iterations run eagerly on a side stream, as CUDA graph capture requires (cuDNN autotuning,
  lazy state, compilation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from resexp import distributed
from resexp.run.speed import EAGER, Speed


class Running:
    """Sums of training loss and errors over an interval, kept on the device (no sync per step).
    The sums are updated in place, so a CUDA graph can hold on to them. With fp16's gradient
    scaler (`scaled`) also the steps it skipped because their gradients overflowed."""

    def __init__(self, device: torch.device, scaled: bool = False) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.errors = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0
        self.scaled, self.skipped = scaled, 0

    def reset(self) -> None:
        self.loss.zero_()
        self.errors.zero_()
        self.count = self.skipped = 0

    def state_dict(self) -> dict[str, Any]:
        """The sums of every process (a checkpoint carries them; under torchrun rank 0 resumes them)."""
        loss, errors, count = self.totals()
        return {"loss": loss, "errors": int(errors), "count": int(count), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.fill_(state["loss"])
        self.errors.fill_(state["errors"])
        self.count = state["count"]
        self.skipped = state.get("skipped", 0)  # a checkpoint from before fp16 counted none

    def accumulate(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """The device half of `add` (what a CUDA graph records)."""
        self.loss += loss.detach() * len(labels)
        self.errors += (logits.argmax(1) != labels).sum()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.accumulate(loss, logits, labels)
        self.count += len(labels)

    def totals(self) -> list[float]:
        """[loss sum, errors, images] over every process of the run (summed under torchrun)."""
        return distributed.sum_([self.loss.item(), float(self.errors.item()), float(self.count)], self.loss.device)

    def summary(self, prefix: str) -> dict[str, float]:
        """Mean loss and error (%) of the interval, over every process; with fp16, the steps skipped."""
        loss, errors, count = self.totals()
        out = {f"{prefix}/loss": loss / count, f"{prefix}/error": 100.0 * errors / count}
        if self.scaled:  # every process skips the same steps (DDP gives all of them the same gradients)
            out[f"{prefix}/skipped_steps"] = self.skipped
        return out


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def forward_backward_update(
    net: Any,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    speed: Speed,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Forward, backward and the SGD update; (loss, logits, whether the update was skipped: fp16's
    scaler skips a step whose scaled gradients overflowed, and lowers its scale)."""
    logits = speed.forward(net, x)
    loss = F.cross_entropy(logits, y)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return loss, logits, False
    scale = scaler.get_scale()
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # unscales; leaves the weights alone when a gradient is not finite
    scaler.update()
    return loss, logits, scaler.get_scale() < scale


def train_step(
    net: Any,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    running: Running,
    speed: Speed = EAGER,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """One eager SGD iteration on a batch; `net` is the model or its compiled form."""
    optimizer.zero_grad(set_to_none=True)
    loss, logits, skipped = forward_backward_update(net, optimizer, x, y, speed, scaler)
    running.add(loss, logits, y)
    running.skipped += skipped


class EagerStep:
    def __init__(
        self,
        net: Any,
        optimizer: torch.optim.Optimizer,
        running: Running,
        speed: Speed,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.net, self.optimizer, self.running, self.speed, self.scaler = net, optimizer, running, speed, scaler

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        set_lr(self.optimizer, lr)
        train_step(self.net, self.optimizer, x, y, self.running, self.speed, self.scaler)


class GraphedStep(EagerStep):
    WARMUP = 3  # eager iterations before the first capture

    def __init__(self, net: Any, optimizer: torch.optim.Optimizer, running: Running, speed: Speed) -> None:
        super().__init__(net, optimizer, running, speed)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_lr: float | None = None
        self.eager_steps = 0
        self.static_x: torch.Tensor | None = None
        self.static_y: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        if self.eager_steps < self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                super().__call__(x, y, lr)
            torch.cuda.current_stream().wait_stream(side)
            self.eager_steps += 1
            return
        if self.graph is None or lr != self.graph_lr or x.shape != self.static_x.shape:
            self.capture(x, y, lr)  # first time, new lr, or a batch of another size (a short last batch)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        self.running.count += len(y)

    def capture(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        """Record one iteration at learning rate `lr` (nothing runs while recording)."""
        self.graph = None  # free the previous graph's memory first
        if self.static_x is None or self.static_x.shape != x.shape:
            self.static_x, self.static_y = torch.empty_like(x), torch.empty_like(y)
        set_lr(self.optimizer, lr)
        # Gradients must be allocated inside the graph, so that replays overwrite them rather
        # than add to tensors that live outside it.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # never with fp16's scaler (resexp.run.speed.resolve refuses the pair)
            loss, logits, _ = forward_backward_update(
                self.net, self.optimizer, self.static_x, self.static_y, self.speed
            )
            self.running.accumulate(loss, logits, self.static_y)
        self.graph, self.graph_lr = graph, lr


def make_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    running: Running,
    speed: Speed,
    scaler: torch.amp.GradScaler | None = None,
) -> EagerStep:
    """The iteration as `speed` says: compiled or not, graphed or not, scaled (fp16) or not."""
    net = speed.for_training(model)
    if speed.cuda_graph:
        return GraphedStep(net, optimizer, running, speed)
    return EagerStep(net, optimizer, running, speed, scaler)


def stage_grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """The norm of the last step's gradient over the stem, each stage and the head: the
    `log.grad_norms` probe (per-stage gradient flow in TensorBoard, as grad_norm/*)."""
    parts = {"stem": model.stem, **{f"stage{i + 1}": s for i, s in enumerate(model.stages)}, "head": model.head}
    norms = {}
    for name, module in parts.items():
        grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
        if grads:
            norms[f"grad_norm/{name}"] = torch.stack(grads).norm().item()
    return norms
