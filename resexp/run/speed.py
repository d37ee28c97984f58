"""How the training step runs fast, separately from what it computes.

Six switches (config group `speed`), each a no-op when off, so the loop reads the same whatever
is on: bf16 or fp16 autocast (fp16 with a gradient scaler), channels_last (NHWC) activations,
torch.compile, PyTorch's fused SGD kernel, the whole iteration replayed as one CUDA graph
(resexp/step.py; a CIFAR iteration is about a thousand small kernels, too many to launch one by
one from Python), and cuDNN's per-shape algorithm search (the batch shape is fixed). `auto`/null
resolves per device to what was measured fastest (benchmarks/NOTES.md): on a GPU the precision
its tensor cores compute (bf16 from compute capability 8.0, fp16 on 7.x, fp32 below); on a CPU
with native bf16 units (AMX, AVX-512 BF16) bf16 autocast and channels_last, on other CPUs nothing.

The compiled module is used for training steps only. Evaluation runs the same parameters
eagerly: its batch shapes vary (the last batch is short) and it takes a small share of the time,
so it is not worth the recompiles.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from resexp.config import CompileMode, Precision, SpeedConfig
from resexp.errors import ConfigError

# What `compile: auto` means on CUDA. Measured on an H100 (benchmarks/NOTES.md): compile=default
# makes a ResNet-56 iteration 1.2 ms faster but costs ~50 s per run, won back only after ~40k
# iterations, so it is left to the user.
AUTO_COMPILE_CUDA = CompileMode.off


GRAPHING_MODES = (CompileMode.reduce_overhead, CompileMode.max_autotune)  # modes that record CUDA graphs themselves


@dataclass(frozen=True)
class Speed:
    """Resolved speed settings for one device: what the run actually uses."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (with a gradient scaler)
    channels_last: bool = False
    compile: str = "off"  # off | a CompileMode (torch spells it with '-': reduce-overhead)
    fused_optimizer: bool = False
    cuda_graph: bool = False
    cudnn_benchmark: bool = False
    device_type: str = "cpu"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision in LOW:
            # no cast cache: a CUDA graph must not record casts made outside it
            return torch.autocast(self.device_type, dtype=LOW[self.precision], cache_enabled=not self.cuda_graph)
        return contextlib.nullcontext()

    def scaler(self) -> torch.amp.GradScaler | None:
        """fp16's gradient scaler (its range is too narrow for small gradients unscaled); None otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.precision == "fp16" else None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def place(self, model: nn.Module) -> nn.Module:
        """The model in the memory format the step uses (in place; returns the same module)."""
        if self.device_type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        return model.to(memory_format=self.memory_format)

    def for_training(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable that runs training forwards: the compiled model, or the model itself."""
        if self.compile == "off":
            return model
        return torch.compile(model, mode=None if self.compile == "default" else self.compile.replace("_", "-"))

    def forward(self, net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (fp32) of a batch: the input in the step's memory format, under autocast."""
        with self.autocast():
            return net(x.contiguous(memory_format=self.memory_format)).float()

    def optimizer_options(self) -> dict[str, Any]:
        return {"fused": True} if self.fused_optimizer else {}

    def describe(self) -> dict[str, Any]:
        """The settings, as environment.json and `resexp bench` record them."""
        return {k: v for k, v in asdict(self).items() if k != "device_type"}


EAGER = Speed()  # fp32, eager, contiguous: the reference behaviour, and a CPU's default without bf16 units


LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast's dtype for each low precision


BF16_CAPABILITY, FP16_CAPABILITY = (8, 0), (7, 0)  # CUDA compute capabilities with bf16 / fp16 tensor cores


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo's names for the CPU units that compute in bf16


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere, or when they cannot be read)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether the CPU has native bf16 units (Intel AMX, or AVX-512 BF16 on Intel and AMD Zen 4+)."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def cuda_precision(capability: tuple[int, int]) -> Precision:
    """What a GPU computes natively: bf16 from compute capability 8.0 (A100, H100, RTX 30xx and
    later), fp16 with a gradient scaler on 7.x (V100, T4, RTX 20xx: torch emulates bf16 there, and
    users report it at less than half fp32's speed), fp32 below (P100 and older: no tensor cores)."""
    if capability >= BF16_CAPABILITY:
        return Precision.bf16
    return Precision.fp16 if capability >= FP16_CAPABILITY else Precision.fp32


def resolve(cfg: SpeedConfig, device: torch.device) -> Speed:
    """Turn `auto`/null into the per-device defaults: on CUDA everything measured to pay, in the
    precision the GPU computes natively; on a CPU with native bf16 units bf16 autocast and
    channels_last (2.0x there, measured), else nothing; on a Mac's GPU (MPS) nothing (fp32, eager:
    none of it measured there; the fused SGD kernel stays off even when asked for)."""
    cuda, mps = device.type == "cuda", device.type == "mps"
    fast_cpu = device.type == "cpu" and cpu_has_bf16()
    precision = cfg.precision
    if precision == Precision.auto:
        if cuda:
            precision = cuda_precision(torch.cuda.get_device_capability(device))
        else:
            precision = Precision.bf16 if fast_cpu else Precision.fp32
    mode = cfg.compile
    if mode == CompileMode.auto:
        mode = AUTO_COMPILE_CUDA if cuda else CompileMode.off
    channels_last = (
        (cuda or (fast_cpu and precision == Precision.bf16)) if cfg.channels_last is None else cfg.channels_last
    )
    fused = cuda if cfg.fused_optimizer is None else cfg.fused_optimizer and not mps  # not measured on MPS: off
    scaled = precision == Precision.fp16  # its scaler reads an overflow flag on the CPU every step
    graph = cuda and mode not in GRAPHING_MODES and not scaled if cfg.cuda_graph is None else cfg.cuda_graph
    if graph and not cuda:
        raise ConfigError(f"speed.cuda_graph=true needs a CUDA device, not {device}")
    if graph and scaled:
        raise ConfigError(
            "speed.cuda_graph=true cannot be combined with speed.precision=fp16: its gradient scaler checks every "
            "step's gradients for overflow on the CPU, which a graph cannot record; use one of the two"
        )
    if graph and mode in GRAPHING_MODES:
        raise ConfigError(
            f"speed.cuda_graph=true cannot be combined with speed.compile={mode}, which records "
            "CUDA graphs of its own: use one of the two"
        )
    benchmark = cuda if cfg.cudnn_benchmark is None else cfg.cudnn_benchmark
    return Speed(str(precision), channels_last, str(mode), fused, graph, benchmark, device.type)
