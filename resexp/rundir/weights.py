"""A run's trained weights: where they are (`of_run`: the latest or best checkpoint of a run
trained here, the published tensors of an imported one), and the formats they leave resexp in
(written by `resexp export`, resexp.commands.export), with the reading side that `hubconf.py`
(torch.hub) and `resexp import` use to build a net and load them.

Two formats. `state_dict`: the net's tensors under resexp's own names, with the model fields that
build it (`model.family`, `model.depth`, `model.mode`, ...), its number of classes, and where they
came from (the run, the checkpoint's iteration and SHA-256); `hubconf.resexp_net(weights=FILE)`
or `load(FILE)` builds that net and loads them. `torchvision`: a plain state_dict under
torchvision's names (`conv1`, `layer1.0.bn2`, `fc`), which `torchvision.models.resnet18/34`
load as they are; only for nets that are torchvision's: ImageNet ResNet-18/34 with option B
shortcuts, the 2015 block with BN. torchvision's ResNet-50/101/152 put the stride of a
downsampling bottleneck in its 3x3 conv ("v1.5"), where the paper (and resexp) put it in the
first 1x1 conv: same names, another function, so they are refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resexp import identity
from resexp.config import paper_shortcut
from resexp.errors import UserError

FORMATS = ("state_dict", "torchvision")


TORCHVISION_DEPTHS = (18, 34)


FORMAT_TAG = "resexp.weights/1"  # in every state_dict export: what reads it checks it


# resexp's names -> torchvision's, for the basic-block ImageNet nets (each pattern whole-name).
TORCHVISION_NAMES = [
    (r"stem\.0\.(.+)", r"conv1.\1"),
    (r"stem\.1\.(.+)", r"bn1.\1"),
    (r"stages\.(\d+)\.(\d+)\.body\.0\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv1.{m[3]}"),
    (r"stages\.(\d+)\.(\d+)\.body\.1\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn1.{m[3]}"),
    (r"stages\.(\d+)\.(\d+)\.body\.3\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv2.{m[3]}"),
    (r"stages\.(\d+)\.(\d+)\.body\.4\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn2.{m[3]}"),
    (r"stages\.(\d+)\.(\d+)\.shortcut\.(\d)\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{m[3]}.{m[4]}"),
    (r"head\.2\.(.+)", r"fc.\1"),
]


WHICH = ("latest", "best")


@dataclass
class Trained:
    """The weights of a run, and what they are: the file, its SHA-256 (what analyses are keyed
    by), the iteration, and the identity the file says it was trained as (None: it does not say)."""

    model: dict[str, torch.Tensor]
    file: Path
    sha256: str
    step: int
    identity: dict[str, Any] | None = None
    imported: bool = False


def of_run(run_path: Path, warn, which: str = "latest", doing: str = "reading") -> Trained | None:
    """A run's weights: its latest checkpoint (an unreadable last.pt falls back to prev.pt) or
    best.pt (`which="best"`), or for a run made by `resexp import`, its weights.pt; None when a run
    trained here has no checkpoint yet. A run without the one asked for is a UserError."""
    from resexp.rundir.checkpoints import latest, read
    from resexp.rundir.folder import BEST, WEIGHTS, RunDir

    run = RunDir(run_path)
    if which not in WHICH:
        raise UserError(f"{which} is not a checkpoint: choose one of {', '.join(WHICH)}")
    if run.imported() is not None:
        if which == "best":
            raise UserError(f"{run_path} holds imported weights: it has no best checkpoint of its own")
        file = run.file(WEIGHTS)
        fields, _, model, saved = read_export(file)
        step = int(saved["source"].get("iterations", 0))
        return Trained(model, file, hashlib.sha256(file.read_bytes()).hexdigest(), step, None, imported=True)
    if which == "best":
        file = run.file(BEST)
        if not file.exists():
            if run.has_checkpoint():
                raise UserError(
                    f"{run_path} has no {BEST} (runs trained before resexp kept best.pt have only their latest "
                    "checkpoints; or no evaluation has finished yet)"
                )
            return None
        saved, sha = read(file)
        return Trained(saved["model"], file, sha, int(saved["step"]), saved.get("identity"))
    found = latest(run, warn, doing=doing)
    if found is None:
        return None
    saved, file, sha = found
    return Trained(saved["model"], file, sha, int(saved["step"]), saved.get("identity"))


def fields_of(values: dict[str, Any]) -> dict[str, Any]:
    """The model fields that build a net (its weights' shapes and functions), from an identity."""
    return {k: values.get(k) for k in identity.weight_keys() if k.startswith("model.")}


def classes_of(state: dict[str, torch.Tensor]) -> int:
    """The number of classes: the rows of the classifier's weight (the head's last linear layer,
    wherever the design puts it: after a pre-activation net's BN-ReLU, after Fixup's scalar bias)."""
    linear = [v for k, v in state.items() if k.startswith("head.") and k.endswith(".weight") and v.dim() == 2]
    if not linear:
        raise UserError("these weights have no classifier (no head.*.weight of a linear layer)")
    return int(linear[-1].shape[0])


def why_not_torchvision(fields: dict[str, Any]) -> str | None:
    """Why a net is not one of torchvision's (None when it is)."""
    family, depth, mode = fields["model.family"], int(fields["model.depth"]), fields["model.mode"]
    if family != "imagenet" or mode != "residual":
        return f"torchvision has residual ImageNet nets only, and this is a {mode} {family} net"
    if depth not in TORCHVISION_DEPTHS:
        if depth in (50, 101, 152):
            return (
                f"torchvision's ResNet-{depth} strides in the 3x3 conv of its bottleneck (v1.5) and the paper's in "
                "the first 1x1: same names, another function; use --to state_dict"
            )
        return f"torchvision has no ResNet-{depth}"
    shortcut = fields.get("model.shortcut") or paper_shortcut("imagenet", depth)
    needed = {  # how a net was initialised does not matter once it is trained
        "model.shortcut": (shortcut, "B"),
        "model.norm": (fields.get("model.norm") or "batch", "batch"),
        "model.block": (fields.get("model.block") or "post", "post"),
    }
    for key, (value, theirs) in needed.items():
        if value != theirs:
            return f"torchvision's ResNet-{depth} has {key}={theirs}, and this net {value}"
    return None  # (SkipInit and Fixup, which add scalars, come without BN: refused above)


def torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under torchvision's names."""
    out = {}
    for name, tensor in state.items():
        for pattern, replacement in TORCHVISION_NAMES:
            match = re.fullmatch(pattern, name)
            if match:
                out[match.expand(replacement) if isinstance(replacement, str) else replacement(match)] = tensor
                break
        else:
            raise UserError(f"{name} has no torchvision name: this net is not one of torchvision's")
    return out


def read_export(path: Path) -> tuple[dict[str, Any], int, dict[str, torch.Tensor], dict[str, Any]]:
    """(model fields, classes, tensors, the whole file) of a file written by --to state_dict (and
    an imported run's weights.pt, which has the same format)."""
    saved = torch_file(path)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT_TAG or not isinstance(saved.get("model"), dict):
        raise UserError(f"{path} is not a resexp weights file ({FORMAT_TAG})")
    return dict(saved["fields"]), int(saved["num_classes"]), saved["model"], saved


def torch_file(path: str | Path) -> Any:
    """What torch.load reads from `path` with weights_only (no code runs), or one line why not."""
    from resexp.rundir.folder import NUMPY_STATE  # resexp 0.1's checkpoints hold numpy's RNG state

    try:
        with torch.serialization.safe_globals(NUMPY_STATE):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a weights file") from None
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{path} is not a weights file torch can read ({type(e).__name__})") from None


def load(path: str | Path) -> tuple[dict[str, Any], int, dict[str, torch.Tensor]]:
    """(model fields, classes, tensors) of an exported state_dict or a resexp checkpoint (last.pt)."""
    saved = torch_file(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise UserError(f"{path} is neither a resexp export (--to state_dict) nor a resexp checkpoint")
    if saved.get("format") == FORMAT_TAG:
        return dict(saved["fields"]), int(saved["num_classes"]), saved["model"]
    if "model_fields" in saved:  # a checkpoint: its weight fields (absent ones were defaults then)
        values = {**identity.defaults(), **saved["model_fields"]}
        return fields_of(values), classes_of(saved["model"]), saved["model"]
    raise UserError(f"{path} is neither a resexp export (--to state_dict) nor a resexp checkpoint")


def build(fields: dict[str, Any], num_classes: int) -> nn.Module:
    """The net the fields describe, freshly initialised; combinations `resexp train` refuses (a
    depth the family lacks, Fixup with BN, ...) are refused here too, in its words."""
    from resexp.config import Config
    from resexp.errors import ConfigError
    from resexp.nets.build import build_model

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} must be an integer of at least 2")
    return build_model(Config(model=model_config(fields)), num_classes)


def model_config(fields: dict[str, Any]):
    """The ModelConfig the fields describe, converted and checked as `resexp train` converts and
    checks its overrides (the schema's types and choices, then the rules), in its words."""
    from omegaconf import OmegaConf

    from resexp.config import Config, model_rules
    from resexp.errors import ConfigError, one_line

    values = {key.partition(".")[2]: value for key, value in fields.items()}
    try:
        model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), {"model": values})).model
    except Exception as e:  # a value the schema does not take (norm='group', depth='deep'), a field it lacks
        raise ConfigError(one_line(e)) from None
    model_rules(model)
    if model.shortcut is None:  # the paper's option for the depth, as a run's config resolves it
        model.shortcut = paper_shortcut(model.family, model.depth)
    return model


def load_into(net: nn.Module, fields: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    """`net` (built from `fields`) with the tensors loaded; a mismatch is one line (a design whose
    build changed since the weights were made says so)."""
    from resexp.nets.build import load_weights

    load_weights(net, tensors, model_config(fields), str(source))
    return net
