"""The loop's evaluation: a net's loss and error over a test or validation stream (every view of
a multi-view protocol averaged), summed over the processes of a distributed run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resexp import distributed
from resexp.data.common import EvalStream
from resexp.run.speed import EAGER, Speed


@torch.no_grad()
def evaluate(model: nn.Module, batches: EvalStream, prefix: str, speed: Speed = EAGER) -> dict[str, float]:
    """Loss and error (%) over a whole evaluation set (summed over the processes under torchrun,
    each of which holds a slice of it). Several views of an image have their softmax outputs
    averaged: 5-d batches (B, crops, C, H, W) are multi-crop, a list of (views, C, H, W) tensors
    is the multi-scale test of one image."""
    model.eval()
    loss, errors, count = 0.0, 0, 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for x, y in batches:
        if isinstance(x, list):
            probs = torch.cat([F.softmax(speed.forward(model, v), -1) for v in x]).mean(0, keepdim=True)
        elif x.dim() == 5:
            probs = F.softmax(speed.forward(model, x.flatten(0, 1)), -1).view(x.shape[0], x.shape[1], -1).mean(1)
        else:
            probs = None
            logits = speed.forward(model, x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            errors += (logits.argmax(1) != y).sum().item()
        if probs is not None:
            loss += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
            errors += (probs.argmax(1) != y).sum().item()
        count += len(y)
    model.train()
    loss, errors, count = distributed.sum_([loss, errors, count], device)
    return {f"{prefix}/loss": loss / count, f"{prefix}/error": 100.0 * errors / count}
