"""The typed config tree of a resexp run.

The dataclasses below are the schema, registered with Hydra's ConfigStore; the YAML files under
configs/ only set values (each one extends its schema through its defaults list). So unknown keys
and wrong types fail while Hydra composes, with OmegaConf naming the key, and enum fields list
their valid choices. Rules that tie several fields together (depth = 6n+2, milestones inside the
schedule, ...) and ranges (momentum in [0, 1), a seed numpy accepts, ...) are checked once, by
`validate`, before anything is read or written.

Defaults reproduce the paper's CIFAR-10 recipe (He et al. 2015, Sec. 4.2): ResNet-20 with option A
shortcuts, SGD with lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, lr divided by 10 at 50% and
75% of the schedule (32k and 48k of 64k iterations).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any  # Optional, not X | None: the schema must read on every OmegaConf 2.3

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from resexp.errors import ConfigError
from resexp.nets.spec import Body, Family, Init, Mode, Norm, Order, ShortcutOption, StrEnum, net_spec

CONFIG_PACKAGE = "resexp.configs"  # configs/ of the repository, shipped inside the package


MAX_SEED = 2**32 - 1  # numpy's seed range


MONITORS = ("train/error", "test/error", "val/error", "train/loss", "test/loss", "val/loss")


NAME = re.compile(r"[\w.,=+-]+(/[\w.,=+-]+)*")  # relative folders below runs/, no '..'


# Field metadata. IDENTITY: False for settings that change where or how fast a run goes, not its
# numbers (a run may resume under other values; they are not in its folder name). WEIGHTS: False for
# model fields that do not shape the weights (a checkpoint given as resume= must agree on the others).
# ADDED: identity fields added after runs recorded their identity's digest (see `added`).
IDENTITY, WEIGHTS, ADDED = "identity", "weights", "added"


def setting(default: Any) -> Any:
    """A field that is not part of a run's identity."""
    return field(default=default, metadata={IDENTITY: False})


def added(default: Any) -> Any:
    """An identity field added after runs recorded their identity's digest (status.json): at its
    default it is left out of the digest, so that a run of an older resexp, which computed exactly
    what the default computes, is still the run its folder says."""
    return field(default=default, metadata={ADDED: True})


class DataName(StrEnum):
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagenet = "imagenet"
    synthetic = "synthetic"


class Normalize(StrEnum):
    pixel_mean = "pixel_mean"  # the paper's per-pixel mean subtraction (Sec. 4.2)
    channel = "channel"  # per-channel mean/std normalisation (CIFAR: of its training set; ImageNet: ImageNet's)
    imagenet = "imagenet"  # ImageNet's fixed per-channel mean and std, on any data (what akamaster's nets expect)


class ScheduleName(StrEnum):
    multistep = "multistep"
    plateau = "plateau"


class Precision(StrEnum):
    auto = "auto"  # by what the device computes natively (resexp.run.speed.resolve): bf16, fp16 or fp32
    fp32 = "fp32"
    bf16 = "bf16"  # bf16 autocast: convolutions in bf16, weights, BN statistics and the loss in fp32
    fp16 = "fp16"  # fp16 autocast with a gradient scaler (GPUs of compute capability 7.x: T4, V100)


class CompileMode(StrEnum):
    """torch.compile's modes (torch spells them with '-'); `off` runs eager. reduce_overhead and
    max_autotune also capture the training step's kernels in CUDA graphs (the batch shape is fixed)."""

    auto = "auto"  # resexp.run.speed.AUTO_COMPILE_CUDA on CUDA (measured: off), off on CPU
    off = "off"
    default = "default"
    reduce_overhead = "reduce_overhead"
    max_autotune = "max_autotune"
    max_autotune_no_cudagraphs = "max_autotune_no_cudagraphs"


@dataclass
class ModelConfig:
    family: Family = Family.cifar
    depth: int = 20
    mode: Mode = Mode.residual
    shortcut: ShortcutOption | None = None  # null = the paper's: B for bottleneck nets (50/101/152), else A
    # under torchrun: BatchNorm statistics of the global batch (SyncBatchNorm); not in a checkpoint's shapes
    sync_bn: bool = field(default=False, metadata={WEIGHTS: False})
    # The counterfactuals (resexp.nets.blocks, resexp.nets.inits); the defaults are the 2015 nets. Added after
    # runs first recorded their identity's digest: at their defaults they leave it as it was.
    norm: Norm = added(Norm.batch)  # batch | none (no normalisation: every conv gets a bias)
    init: Init = added(Init.he)  # he | xavier | zero_gamma | skipinit | fixup
    block: Order = added(Order.post)  # post (the 2015 block) | pre (full pre-activation, He et al. 2016)
    body: Body | None = added(None)  # CIFAR: basic (6n+2, the default) | bottleneck (9n+2); ImageNet: by depth


@dataclass
class DataConfig:
    name: DataName = DataName.cifar10
    # where the data is, not which: data.json's fingerprint says which (a copy elsewhere is the same data)
    root: str = setting("data")  # a folder (torchvision layout or <name>.npz inside) or an .npz file
    file: str | None = None  # an .npz inside root to read instead of <name>.npz
    download: bool = setting(False)  # let torchvision download CIFAR into root (needs internet)
    batch_size: int = 128
    eval_batch_size: int = setting(1000)
    subset: int | None = None  # train on the first N training images only
    val_split: int = 0  # hold out the last N training images as a validation set (paper: 5000)
    augment: bool = True  # CIFAR: 4-pixel pad + random crop + flip; ImageNet: scale augmentation
    normalize: Normalize = Normalize.pixel_mean
    workers: int = setting(4)  # DataLoader workers (ImageNet folders only; CIFAR lives in one tensor)
    # ImageNet (Sec. 3.4): shorter side sampled in [scale_min, scale_max], crop_size crops.
    scale_min: int = 256
    scale_max: int = 480
    crop_size: int = 224
    ten_crop: bool = False  # evaluate on 10 crops (4 corners + centre, and their flips)
    lighting: float = 0.1  # AlexNet's PCA colour noise: the std of its coefficients (0 = off)
    test_scales: list[int] | None = None  # multi-scale test: whole images at these shorter sides + flips
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
    # multistep: lr /= 10 at these iterations; null = the paper's 50% and 75% of `iterations`
    milestones: list[int] | None = None
    gamma: float = 0.1
    # plateau: divide by 1/gamma when `monitor` has not improved by `min_delta` points for
    # `patience` evaluations in a row, never going below `min_lr`.
    monitor: str = "test/error"
    patience: int = 5
    min_delta: float = 0.1
    min_lr: float = 1e-4
    # warm-up (the paper's ResNet-110 recipe): lr = warmup_lr until an evaluation reports
    # a training error below warmup_until_error (%), then the schedule's own lr.
    warmup_lr: float | None = None
    warmup_until_error: float = 80.0


@dataclass
class SpeedConfig:
    """How fast the step runs, not what it computes: none of these changes results beyond
    numerical noise, and a run may resume under other settings. null/auto = what was measured to
    be fastest on the device (resexp/speed.py)."""

    precision: Precision = Precision.auto
    channels_last: bool | None = None  # NHWC activations; null = on for CUDA and with bf16 on a CPU
    compile: CompileMode = CompileMode.auto
    fused_optimizer: bool | None = None  # one fused SGD kernel; null = on for CUDA
    cuda_graph: bool | None = None  # the whole iteration as one CUDA graph; null = on for CUDA
    cudnn_benchmark: bool | None = None  # let cuDNN time its algorithms per shape; null = on for CUDA


@dataclass
class LogConfig:
    """What a run records besides its metrics; none of it changes the results."""

    grad_norms: bool = False  # per-stage gradient norms of the last training step at each evaluation


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig, metadata={IDENTITY: False})
    log: LogConfig = field(default_factory=LogConfig, metadata={IDENTITY: False})
    name: str = setting("default")  # the folder under runs/ that groups a set of runs (presets set it)
    seed: int = 0
    device: str = setting("auto")  # auto = cuda when available, else cpu; or cpu, cuda, cuda:N
    eval_every: int | None = None  # iterations between evaluations; None = once per epoch
    # a checkpoint to start from when the run has none of its own (plan refuses two jobs that differ only here)
    resume: str | None = setting(None)


def register() -> None:
    """Store the schemas under the names the YAML files extend (base_* in each group), and the
    resolver of the paper's warm-up (resexp.launch.hydra.register adds the one of a job's folder)."""
    cs = ConfigStore.instance()
    if "base_config.yaml" not in cs.repo:  # once per process: storing a schema converts it again (~20 ms)
        cs.store(name="base_config", node=Config)
        cs.store(group="model", name="base_model", node=ModelConfig)
        cs.store(group="data", name="base_data", node=DataConfig)
        cs.store(group="schedule", name="base_schedule", node=ScheduleConfig)
    if not OmegaConf.has_resolver("resexp.paper_warmup"):
        OmegaConf.register_new_resolver("resexp.paper_warmup", paper_warmup)


def paper_shortcut(family: str, depth: Any) -> ShortcutOption:
    """The paper's option when none is set: B for the ImageNet bottleneck nets (Sec. 3.4,
    "ResNet-50/101/152 use option B"), A for the others (CIFAR, Sec. 4.2; ImageNet 18/34, Table 2)."""
    try:
        bottleneck = family == Family.imagenet and net_spec(family, int(depth)).block == "bottleneck"
    except ValueError:  # validate() names the bad depth
        bottleneck = False
    return ShortcutOption.B if bottleneck else ShortcutOption.A


def paper_warmup(depth: Any) -> float | None:
    """The paper's warm-up lr for its 110- and 1202-layer CIFAR nets (Sec. 4.2), none below."""
    return 0.01 if int(depth) >= 110 else None


def paper_milestones(iterations: int) -> list[int]:
    """lr / 10 at 50% and 75% of the schedule: 32k and 48k of the paper's 64k iterations."""
    return sorted({m for m in (iterations // 2, iterations * 3 // 4) if 0 < m < iterations})


def milestones_of(s: ScheduleConfig) -> list[int]:
    if s.name != ScheduleName.multistep:
        return []
    return paper_milestones(s.iterations) if s.milestones is None else list(s.milestones)


def validate(cfg: Config) -> None:
    """Check every field's range and the rules that tie fields together; raise ConfigError with
    one line naming the field, its value and what would be valid. One function per group, then the
    few rules that tie groups together."""
    model_rules(cfg.model)
    run_rules(cfg)
    data_rules(cfg.data)
    optim_rules(cfg.optim)
    schedule_rules(cfg.schedule)
    if cfg.schedule.monitor.startswith("val/") and cfg.data.val_split == 0:
        raise ConfigError(
            f"schedule.monitor={cfg.schedule.monitor} needs a validation set: set data.val_split (e.g. 5000)"
        )


def at_least(bounds: dict[str, tuple[float, float]]) -> None:
    """{key: (value, lowest valid value)}: the first value below its bound, refused."""
    for key, (value, low) in bounds.items():
        if value < low:
            raise ConfigError(f"{key}={value} must be at least {low}")


def finite(key: str, value: float, kind: str) -> None:
    """A finite number, non-negative, and not zero where `kind` is "positive"."""
    if not math.isfinite(value) or value < 0 or (kind == "positive" and value == 0):
        raise ConfigError(f"{key}={value} must be a finite {kind} number")


def model_rules(m: ModelConfig) -> None:
    """A depth the family builds (6n+2, 9n+2 with bottlenecks, 18..152), and switches that go together."""
    try:
        net_spec(m.family, m.depth, m.body)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    design(m)


def data_rules(d: DataConfig) -> None:
    """Sizes, the test methods (ImageNet's), and where the data is."""
    bounds = {
        "data.batch_size": (d.batch_size, 1),
        "data.eval_batch_size": (d.eval_batch_size, 1),
        "data.val_split": (d.val_split, 0),
        "data.workers": (d.workers, 0),
    }
    if d.subset is not None:
        bounds["data.subset"] = (d.subset, 1)
    if d.name == DataName.synthetic:
        bounds |= {
            "data.train_size": (d.train_size, 1),
            "data.test_size": (d.test_size, 1),
            "data.image_size": (d.image_size, 1),
            "data.num_classes": (d.num_classes, 2),
        }
    if d.name == DataName.imagenet:
        bounds |= {"data.crop_size": (d.crop_size, 1), "data.scale_min": (d.scale_min, 1)}
    at_least(bounds)
    if not math.isfinite(d.lighting) or d.lighting < 0:
        raise ConfigError(f"data.lighting={d.lighting} must be a finite non-negative number (AlexNet: 0.1; 0 = off)")
    if d.test_scales is not None:
        scales = list(d.test_scales)
        if d.name != DataName.imagenet:
            raise ConfigError(f"data.test_scales={scales} is ImageNet's multi-scale test: it needs data=imagenet")
        if not scales or min(scales) < 1:
            raise ConfigError(
                f"data.test_scales={scales} must list shorter sides >= 1 (the paper: [224,256,384,480,640])"
            )
        if d.ten_crop:
            raise ConfigError("data.ten_crop=true and data.test_scales are two test methods: choose one")
    if d.ten_crop and d.name != DataName.imagenet:
        raise ConfigError(
            f"data.ten_crop=true is ImageNet's 10-crop test, and {d.name}'s images are evaluated whole: it needs "
            "data=imagenet"
        )
    if d.name == DataName.imagenet and d.normalize != Normalize.channel:
        raise ConfigError(
            f"data.normalize={d.normalize} is not available for ImageNet: its images are normalised with the "
            "per-channel mean and std (data.normalize=channel; the README lists this deviation from the paper)"
        )
    if d.name == DataName.imagenet and not d.crop_size <= d.scale_min <= d.scale_max:
        raise ConfigError(
            f"data.crop_size={d.crop_size}, data.scale_min={d.scale_min} and data.scale_max={d.scale_max} "
            "must satisfy crop_size <= scale_min <= scale_max"
        )
    if d.name == DataName.synthetic and d.train_size - d.val_split < d.batch_size:
        raise ConfigError(
            f"data.batch_size={d.batch_size} is larger than the {d.train_size - d.val_split} synthetic training "
            "images (data.train_size - data.val_split)"
        )
    if d.file is not None and d.root.endswith(".npz"):
        raise ConfigError(f"data.file={d.file} and data.root={d.root} both name a file: set only one")


def optim_rules(o: OptimConfig) -> None:
    """SGD's lr, weight decay and momentum (the paper: 0.1, 1e-4, 0.9)."""
    finite("optim.lr", o.lr, "positive")
    finite("optim.weight_decay", o.weight_decay, "non-negative")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum={o.momentum} must lie in [0, 1) (the paper: 0.9)")


def schedule_rules(s: ScheduleConfig) -> None:
    """The length, the lr's steps (milestones inside the schedule, or on plateau) and the warm-up."""
    at_least({"schedule.iterations": (s.iterations, 1), "schedule.patience": (s.patience, 1)})
    finite("schedule.min_delta", s.min_delta, "non-negative")
    finite("schedule.min_lr", s.min_lr, "non-negative")
    if s.warmup_lr is not None:
        finite("schedule.warmup_lr", s.warmup_lr, "positive")
    if not 0 < s.gamma < 1:
        raise ConfigError(f"schedule.gamma={s.gamma} must lie in (0, 1) (the paper: 0.1)")
    if not 0 < s.warmup_until_error <= 100:
        raise ConfigError(f"schedule.warmup_until_error={s.warmup_until_error} must lie in (0, 100] (percent)")
    if s.name == ScheduleName.multistep and s.milestones is not None:
        milestones = list(s.milestones)
        if any(not 0 < x < s.iterations for x in milestones):
            raise ConfigError(
                f"schedule.milestones={milestones} must lie inside the schedule: "
                f"0 < milestone < schedule.iterations={s.iterations} (or leave them out: 50% and 75%)"
            )
        if milestones != sorted(set(milestones)):
            raise ConfigError(f"schedule.milestones={milestones} must be strictly increasing")
    if s.monitor not in MONITORS:
        raise ConfigError(f"schedule.monitor={s.monitor!r} is unknown: valid choices are {', '.join(MONITORS)}")


def run_rules(cfg: Config) -> None:
    """The run's own fields: its seed, how often it evaluates, and its name (a folder below runs/)."""
    bounds = {"seed": (cfg.seed, 0)}
    if cfg.eval_every is not None:
        bounds["eval_every"] = (cfg.eval_every, 1)
    at_least(bounds)
    if cfg.seed > MAX_SEED:
        raise ConfigError(f"seed={cfg.seed} is too large: seeds run from 0 to 2**32 - 1 = {MAX_SEED}")
    if not NAME.fullmatch(cfg.name) or any(part in (".", "..") for part in cfg.name.split("/")):
        raise ConfigError(
            f"name={cfg.name!r} must be a folder name below runs/ (letters, digits and . , = + - _, "
            "subfolders with /, no '..')"
        )


def design(m: ModelConfig) -> None:
    """The counterfactual switches that make no sense together, each refused in one line."""
    branch_inits = {Init.zero_gamma, Init.skipinit, Init.fixup}
    if m.init in branch_inits and m.mode == Mode.plain:
        raise ConfigError(
            f"model.init={m.init} initialises residual branches, and a plain net has none: use model.mode=residual "
            "(or model.init=he or xavier)"
        )
    if m.init in (Init.fixup, Init.skipinit) and m.norm != Norm.none:
        who = "Zhang et al. 2019" if m.init == Init.fixup else "De and Smith 2020"
        raise ConfigError(
            f"model.init={m.init} trains without normalisation ({who}): add model.norm=none, or use "
            "model.init=zero_gamma for the same start with BN"
        )
    if m.init == Init.zero_gamma and m.norm != Norm.batch:
        raise ConfigError(
            "model.init=zero_gamma zeroes the last BN scale of each residual branch, and model.norm=none has none: "
            "use model.init=skipinit or fixup without BN"
        )
    if m.init == Init.fixup and m.block != Order.post:
        raise ConfigError("model.init=fixup is defined for the 2015 block: use model.block=post with it")
    if m.init == Init.zero_gamma and m.block != Order.post:
        raise ConfigError(
            "model.init=zero_gamma with model.block=pre builds branches that never train: a pre-activation branch's "
            "last BN is followed by a ReLU, so a zero scale there passes no gradient to the branch (use "
            "model.block=post with zero_gamma)"
        )


def to_object(cfg: DictConfig) -> Config:
    """The composed DictConfig (without its hydra node) as typed dataclasses, with the defaults
    that depend on other fields filled in: the run's config.yaml holds the milestones it used."""
    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    if config.model.shortcut is None:
        config.model.shortcut = paper_shortcut(config.model.family, config.model.depth)
    if config.schedule.name == ScheduleName.multistep and config.schedule.milestones is None:
        config.schedule.milestones = paper_milestones(config.schedule.iterations)
    return config
