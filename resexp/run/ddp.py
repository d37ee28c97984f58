"""Training on several processes (torchrun): the model wrapped in DistributedDataParallel with an
averaging hook that marks a failed all-reduce as a lost peer, rank 0's buffers given to every rank,
and a SyncBatchNorm that also runs on a CPU (gloo)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from resexp.distributed import GroupState, collective, current


def rank0_buffers(model: nn.Module) -> None:
    """Give every process rank 0's BatchNorm running statistics (with per-process BatchNorm each
    process updated its own in the last step), so that all of them evaluate the net that rank 0
    checkpoints."""
    if not current().distributed:
        return
    with collective():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """The module that trains: `model` itself in one process; under torchrun, DDP around it (with
    BatchNorm synchronised over the processes when `sync_bn`). Checkpoints keep `model`."""
    if not current().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    # DDP's collectives are its gradient all-reduce (the hook below) and, at construction, rank 0's
    # weights sent to all. Its per-forward broadcast of rank 0's buffers is off: only evaluation
    # reads the BN running statistics, and rank0_buffers gives every process rank 0's before it
    # (rank 0's own, what it checkpoints, are the same either way).
    with collective():
        ddp = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if device.type != "cuda":  # NCCL's failures say so by type; gloo's need the hook to be known as such
        ddp.register_comm_hook(None, average)
    return ddp


def average(state, bucket):  # noqa: ANN001, ANN201  (DDP checks the annotations, which must be objects)
    """DDP's gradient all-reduce on gloo (the mean over the processes, as its built-in one), whose
    failure marks the group broken: it surfaces in backward as an error of any type. `bucket` is a
    dist.GradBucket; returns a Future of the averaged tensor."""
    tensor = bucket.buffer().div_(current().size)
    try:
        future = dist.all_reduce(tensor, async_op=True).get_future()
    except Exception:
        GroupState.broken = True
        raise
    return remembered(future)


def remembered(future: torch.futures.Future) -> torch.futures.Future:
    """The all-reduce's result (its one tensor); its failure marks the group broken."""

    def done(f: torch.futures.Future) -> torch.Tensor:
        try:
            return f.value()[0]
        except Exception:
            GroupState.broken = True
            raise

    return future.then(done)


class AllReduce(torch.autograd.Function):
    """A sum over the processes that autograd differentiates: the gradient of a sum that every
    process uses is the sum of their gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        with collective():
            dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        with collective():
            dist.all_reduce(grad)
        return grad


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return AllReduce.apply(x)


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, for gloo on the CPU
    (torch's SyncBatchNorm runs on GPUs only). The per-channel sums travel through a
    differentiable all-reduce, so autograd gives the gradient of the global batch's statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims, c = (0, 2, 3), x.shape[1]
        total = all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() / c])]))
        count = total[c]
        mean = total[:c] / count
        centred = x - mean.view(1, c, 1, 1)
        var = all_reduce((centred * centred).sum(dims)) / count  # two passes, as BatchNorm2d computes it
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        shape = (1, c, 1, 1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def convert_sync_batchnorm(module: nn.Module) -> None:
    """Turn every BatchNorm2d of `module` into a CPUSyncBatchNorm, keeping its tensors."""
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = CPUSyncBatchNorm
