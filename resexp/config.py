"""The typed config tree of a resexp run.

The dataclasses below are the schema, registered with Hydra's ConfigStore; the YAML files under
configs/ only set values (each one extends its schema through its defaults list). So unknown keys
and wrong types fail while Hydra composes, with OmegaConf naming the key, and enum fields list
their valid choices. Rules that tie several fields together (depth = 6n+2, milestones inside the
schedule, ...) are checked once, by `validate`, before anything is written.

Defaults reproduce the paper's CIFAR-10 recipe (He et al. 2015, Sec. 4.2): ResNet-20 with option A
shortcuts, SGD with lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, lr divided by 10 at 32k
and 48k iterations, stop at 64k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional  # Optional, not X | None: the schema must read on every OmegaConf 2.3

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from resexp.models import net_spec

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config that composes but breaks one of the cross-field rules; one line for the user."""


class Family(Enum):
    cifar = "cifar"
    imagenet = "imagenet"


class Mode(Enum):
    plain = "plain"
    residual = "residual"


class ShortcutOption(Enum):
    A = "A"  # zero-padded identity where the shape changes; no parameters
    B = "B"  # 1x1 conv + BN projection where the shape changes, identity elsewhere
    C = "C"  # projection in every block


class DataName(Enum):
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagenet = "imagenet"
    synthetic = "synthetic"


class Normalize(Enum):
    pixel_mean = "pixel_mean"  # the paper's per-pixel mean subtraction (Sec. 4.2)
    channel = "channel"  # per-channel mean/std normalisation


class ScheduleName(Enum):
    multistep = "multistep"
    plateau = "plateau"


class Precision(Enum):
    auto = "auto"  # bf16 on CUDA, fp32 elsewhere
    fp32 = "fp32"
    bf16 = "bf16"  # bf16 autocast: convolutions in bf16, weights, BN statistics and the loss in fp32


class CompileMode(Enum):
    """torch.compile's modes, by name; `off` runs eager. reduce_overhead and max_autotune also
    capture the training step's kernels in CUDA graphs (the batch shape is fixed)."""

    auto = "auto"  # resexp.speed.AUTO_COMPILE_CUDA on CUDA (measured: off), off on CPU
    off = "off"
    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"
    max_autotune_no_cudagraphs = "max-autotune-no-cudagraphs"


@dataclass
class ModelConfig:
    family: Family = Family.cifar
    depth: int = 20
    mode: Mode = Mode.residual
    shortcut: ShortcutOption = ShortcutOption.A


@dataclass
class DataConfig:
    name: DataName = DataName.cifar10
    root: str = "data"  # a folder (torchvision layout or <name>.npz inside) or an .npz file
    file: Optional[str] = None  # an .npz inside root to read instead of <name>.npz
    download: bool = False  # let torchvision download CIFAR into root (needs internet)
    batch_size: int = 128
    eval_batch_size: int = 1000
    subset: Optional[int] = None  # train on the first N training images only
    val_split: int = 0  # hold out the last N training images as a validation set (paper: 5000)
    augment: bool = True  # CIFAR: 4-pixel pad + random crop + flip; ImageNet: scale augmentation
    normalize: Normalize = Normalize.pixel_mean
    workers: int = 4  # DataLoader workers (ImageNet folders only; CIFAR lives in one tensor)
    # ImageNet (Sec. 3.4): shorter side sampled in [scale_min, scale_max], crop_size crops.
    scale_min: int = 256
    scale_max: int = 480
    crop_size: int = 224
    ten_crop: bool = False  # evaluate on 10 crops (4 corners + centre, and their flips)
    # synthetic: a generated, learnable, deterministic dataset
    image_size: int = 32
    num_classes: int = 10
    train_size: int = 1024
    test_size: int = 256


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass
class ScheduleConfig:
    name: ScheduleName = ScheduleName.multistep
    iterations: int = 64000  # total training iterations
    milestones: list[int] = field(default_factory=lambda: [32000, 48000])  # multistep: lr /= 10 here
    gamma: float = 0.1
    # plateau: divide by 1/gamma when `monitor` has not improved by `min_delta` points for
    # `patience` evaluations in a row, never going below `min_lr`.
    monitor: str = "test/error"
    patience: int = 5
    min_delta: float = 0.1
    min_lr: float = 1e-4
    # warm-up (the paper's ResNet-110 recipe): lr = warmup_lr until an evaluation reports
    # a training error below warmup_until_error (%), then the schedule's own lr.
    warmup_lr: Optional[float] = None
    warmup_until_error: float = 80.0


@dataclass
class SpeedConfig:
    """How fast the step runs, not what it computes: none of these changes results beyond
    numerical noise, and a run may resume under other settings. null/auto = what was measured to
    be fastest on the device (resexp/speed.py)."""

    precision: Precision = Precision.auto
    channels_last: Optional[bool] = None  # NHWC activations; null = on for CUDA
    compile: CompileMode = CompileMode.auto
    fused_optimizer: Optional[bool] = None  # one fused SGD kernel; null = on for CUDA
    cuda_graph: Optional[bool] = None  # the whole iteration as one CUDA graph; null = on for CUDA
    cudnn_benchmark: Optional[bool] = None  # let cuDNN time its algorithms per shape; null = on for CUDA


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    name: str = "default"  # the folder under runs/ that groups a set of runs (presets set it)
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu; or any torch device string
    eval_every: Optional[int] = None  # iterations between evaluations; None = once per epoch
    resume: Optional[str] = None  # a checkpoint to start from; by default the run's own last.pt


def register() -> None:
    """Store the schemas under the names the YAML files extend (base_* in each group)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="schedule", name="base_schedule", node=ScheduleConfig)


def run_path(data: Any, mode: Any, depth: Any, shortcut: Any, seed: Any) -> str:
    """A run's folder below runs/<name>/, e.g. cifar10/plain-56_s0 or cifar10/residual-56A_s1
    (a plain net has no shortcut option). TensorBoard shows it as the run's name."""
    option = "" if _value(mode) == "plain" else _value(shortcut)
    return f"{_value(data)}/{_value(mode)}-{depth}{option}_s{seed}"


def _value(x: Any) -> Any:
    return x.value if isinstance(x, Enum) else x


def paper_warmup(depth: Any) -> Optional[float]:
    """The paper's warm-up lr for its 110- and 1202-layer CIFAR nets (Sec. 4.2), none below."""
    return 0.01 if int(depth) >= 110 else None


def register_resolvers() -> None:
    for name, fn in (("resexp.run_path", run_path), ("resexp.paper_warmup", paper_warmup)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def validate(cfg: Config | DictConfig) -> None:
    """Check the rules that tie fields together; raise ConfigError with one line naming the
    field, its value and what would be valid."""
    m, d, o, s = cfg.model, cfg.data, cfg.optim, cfg.schedule
    try:
        net_spec(_value(m.family), m.depth)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    positive = {
        "data.batch_size": d.batch_size,
        "data.eval_batch_size": d.eval_batch_size,
        "optim.lr": o.lr,
        "schedule.iterations": s.iterations,
    }
    if cfg.eval_every is not None:
        positive["eval_every"] = cfg.eval_every
    if d.subset is not None:
        positive["data.subset"] = d.subset
    if _value(d.name) == "synthetic":
        positive.update({"data.train_size": d.train_size, "data.test_size": d.test_size})
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key}={value} must be positive")
    for key, value in {"optim.momentum": o.momentum, "optim.weight_decay": o.weight_decay,
                       "data.val_split": d.val_split, "data.workers": d.workers}.items():  # fmt: skip
        if value < 0:
            raise ConfigError(f"{key}={value} must not be negative")
    if not 0 < s.gamma < 1:
        raise ConfigError(f"schedule.gamma={s.gamma} must lie in (0, 1)")
    milestones = list(s.milestones)
    if _value(s.name) == "multistep":
        if any(not 0 < x < s.iterations for x in milestones):
            raise ConfigError(
                f"schedule.milestones={milestones} must lie inside the schedule: "
                f"0 < milestone < schedule.iterations={s.iterations}"
            )
        if milestones != sorted(set(milestones)):
            raise ConfigError(f"schedule.milestones={milestones} must be strictly increasing")
    if s.monitor not in ("train/error", "test/error", "val/error", "train/loss", "test/loss", "val/loss"):
        raise ConfigError(
            f"schedule.monitor={s.monitor!r} is unknown: valid choices are train/error, test/error, "
            "val/error, train/loss, test/loss, val/loss"
        )
    if s.monitor.startswith("val/") and d.val_split == 0:
        raise ConfigError(f"schedule.monitor={s.monitor} needs a validation set: set data.val_split (e.g. 5000)")
    if s.warmup_lr is not None and not s.warmup_lr > 0:
        raise ConfigError(f"schedule.warmup_lr={s.warmup_lr} must be positive")
    if _value(d.name) == "imagenet" and not 0 < d.scale_min <= d.scale_max:
        raise ConfigError(f"data.scale_min={d.scale_min} and data.scale_max={d.scale_max} must satisfy 0 < min <= max")


def to_object(cfg: DictConfig) -> Config:
    """The composed DictConfig as typed dataclasses (enum fields stay enums)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]
