"""`resexp import SOURCE FILE`: a published net as a resexp run folder, so that `eval`, `analyze`,
`report` and `export` read it as they read a run trained here.

The folder is the one `resexp train` would give the config the net corresponds to (runs/<name>/
<data>/<mode>-<depth><option>_s0+...), and holds config.yaml, weights.pt (the tensors under
resexp's names, in `resexp export --to state_dict`'s format), provenance.json (the source, the
file, its SHA-256, how it was trained) and status.json saying `imported`; no metrics, no data.json
(it was not trained on the user's files). `resexp train` refuses to continue it (its optimizer state
and data order were never published). Sources:

- akamaster: the CIFAR-10 ResNets of akamaster/pytorch_resnet_cifar10 (ResNet-20/32/44/56/110/1202,
  option A). Their option A pads the identity with planes/4 zero channels on *both* sides, resexp's
  after it: the import permutes the channels of every stage's residual stream (`akamaster_order`)
  so that the imported net computes the same function. They normalise inputs with ImageNet's mean
  and std, so the run's config says data.normalize=imagenet.
- torchvision: ResNet-18/34 (option B; resexp's modules under other names). torchvision's
  ResNet-50/101/152 stride in the 3x3 conv of the bottleneck ("v1.5"), the paper in the first 1x1:
  refused.

Every check is made before anything is written, and the folder appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resexp import identity
from resexp.errors import RunDirError, UserError
from resexp.rundir.weights import FORMAT_TAG, fields_of, torch_file, torchvision_names

SOURCES = ("akamaster", "torchvision")


AKAMASTER_WIDTHS = (16, 32, 64)


# akamaster's trainer: 200 epochs of 391 batches of 128 (all 50,000 images), lr / 10 at epochs 100 and 150:
# 78,200 iterations, milestones at 50% and 75% (resexp's default milestones for that length).
AKAMASTER_ITERATIONS = 200 * 391


# torchvision's reference recipe for its ResNet-18/34 weights (IMAGENET1K_V1): 90 epochs of 5,005 batches of
# 256, lr / 10 every 30 epochs.
TORCHVISION_EPOCH = 5005


TORCHVISION_BLOCKS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}


BOTTLENECK_BLOCKS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


# akamaster's names -> resexp's: a block's parts (body.0 conv, .1 BN, .2 ReLU, .3 conv, .4 BN), the stem, the classifier
AKAMASTER_PARTS = {"conv1": "0", "bn1": "1", "conv2": "3", "bn2": "4"}


AKAMASTER_ENDS = {
    "module.conv1.weight": "stem.0.weight",
    **{f"module.bn1.{leaf}": f"stem.1.{leaf}" for leaf in ("weight", "bias", "running_mean", "running_var")},
    "module.linear.weight": "head.2.weight",
    "module.linear.bias": "head.2.bias",
}


@dataclass
class Published:
    """A published net read from its file: the config it corresponds to and its tensors."""

    overrides: list[str]  # of `resexp train`: the net, the data, the recipe as far as resexp can say it
    model: dict[str, torch.Tensor]  # under resexp's names
    net: str  # what it is, in the source's words
    trained: str  # how it was trained, as its source says
    iterations: int


def akamaster(saved: Any, path: Path) -> Published:
    """An akamaster/pytorch_resnet_cifar10 checkpoint ({"state_dict": {"module.conv1.weight", ...}})."""
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not isinstance(state, dict) or "module.conv1.weight" not in state or "module.linear.weight" not in state:
        raise UserError(
            f"{path} is not one of akamaster's CIFAR ResNets (a state_dict with module.conv1 ... module.linear)"
        )
    blocks = [len({k.split(".")[2] for k in state if k.startswith(f"module.layer{s}.")}) for s in (1, 2, 3)]
    if len(set(blocks)) != 1 or not blocks[0]:
        raise UserError(f"{path} has {blocks} blocks in its three stages: akamaster's nets have n in each")
    n = blocks[0]
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"module\.layer(\d)\.(\d+)\.(conv1|bn1|conv2|bn2)\.(.+)", key)
        if match:
            stage, block, part, leaf = match.groups()
            renamed[f"stages.{int(stage) - 1}.{block}.body.{AKAMASTER_PARTS[part]}.{leaf}"] = tensor
        elif key in AKAMASTER_ENDS:
            renamed[AKAMASTER_ENDS[key]] = tensor
        else:
            raise UserError(f"{path} has {key}, which akamaster's CIFAR ResNets do not have")
    if tuple(renamed["stages.2.0.body.0.weight"].shape[:1]) != (AKAMASTER_WIDTHS[2],):
        raise UserError(f"{path} is not one of akamaster's CIFAR ResNets (its stages are not 16, 32, 64 wide)")
    classes = renamed["head.2.weight"].shape[0]
    if classes != 10:
        raise UserError(f"{path} classifies {classes} classes: akamaster's nets are CIFAR-10's (10)")
    return Published(
        overrides=[
            "data=cifar10",
            "model=cifar",
            f"model.depth={6 * n + 2}",
            "model.mode=residual",
            "model.shortcut=A",
            "data.normalize=imagenet",
            f"schedule.iterations={AKAMASTER_ITERATIONS}",
        ],
        model=akamaster_order(with_batch_counts(renamed), n),
        net=f"akamaster/pytorch_resnet_cifar10 ResNet-{6 * n + 2}",
        trained=(
            "all 50,000 CIFAR-10 training images, 200 epochs of batch 128, lr 0.1 / 10 at epochs 100 and 150, "
            "momentum 0.9, weight decay 1e-4, 4-pixel pad + crop + flip, ImageNet's mean and std; the published "
            "error is the best epoch's on the test set; its seed is not published (seed=0 here)"
        ),
        iterations=AKAMASTER_ITERATIONS,
    )


def akamaster_order(state: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """akamaster's tensors with each stage's residual-stream channels reordered for resexp's option A.

    Where a stage widens from w to 2w, akamaster's shortcut holds the identity in channels
    [w/2, 3w/2) with zeros around it, resexp's in [0, w) with zeros after. So resexp's channel j of
    the new stage is akamaster's channel order[j]: the old stage's channels (in their own new order)
    shifted by w/2, then the zero channels. Every tensor that writes the stream (each block's last
    conv and BN) is reordered on its outputs, every tensor that reads it (each block's first conv,
    the classifier) on its inputs."""
    out = dict(state)
    order = torch.arange(AKAMASTER_WIDTHS[0])
    for s, width in enumerate(AKAMASTER_WIDTHS):
        before = order
        if s:
            pad = (width - len(before)) // 2
            order = torch.cat([before + pad, torch.arange(pad), torch.arange(pad + len(before), width)])
        for b in range(n):
            reads = before if b == 0 else order
            key = f"stages.{s}.{b}.body."
            out[key + "0.weight"] = state[key + "0.weight"][:, reads]
            out[key + "3.weight"] = state[key + "3.weight"][order]
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                out[key + "4." + leaf] = state[key + "4." + leaf][order]
    out["head.2.weight"] = state["head.2.weight"][:, order]
    return out


def with_batch_counts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BN's num_batches_tracked, which files saved by torch before 0.4.1 lack (read only when BN's
    momentum is None, which resexp's is not)."""
    counts = {k.rsplit(".", 1)[0] + ".num_batches_tracked" for k in state if k.endswith(".running_mean")}
    return {**state, **{k: torch.tensor(0) for k in counts if k not in state}}


def torchvision(saved: Any, path: Path) -> Published:
    """A torchvision ResNet-18/34 state_dict (conv1, bn1, layer1..4, fc), as torchvision's weights are saved."""
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        saved = saved["state_dict"]
    if not isinstance(saved, dict) or "conv1.weight" not in saved or "fc.weight" not in saved:
        raise UserError(f"{path} is not a torchvision ResNet state_dict (conv1 ... layer1..4 ... fc)")
    blocks = tuple(len({k.split(".")[1] for k in saved if k.startswith(f"layer{s}.")}) for s in (1, 2, 3, 4))
    if any(k.endswith("conv3.weight") for k in saved):
        depth = BOTTLENECK_BLOCKS.get(blocks)
        what = f"ResNet-{depth}" if depth else f"a bottleneck net with {blocks} blocks"
        raise UserError(
            f"{path} is torchvision's {what}: torchvision's bottleneck nets stride in the 3x3 conv (v1.5), the "
            "paper's in the first 1x1; same names, another function, so it is not imported (ResNet-18/34 are)"
        )
    depth = TORCHVISION_BLOCKS.get(blocks)
    if depth is None:
        raise UserError(
            f"{path} has {blocks} blocks per stage: not torchvision's ResNet-18 (2, 2, 2, 2) or 34 (3, 4, 6, 3)"
        )
    from resexp.rundir.weights import build

    fields = {**fields_of(identity.defaults()), "model.family": "imagenet", "model.depth": depth}
    fields |= {"model.shortcut": "B"}
    names = torchvision_names({k: k for k in build(fields, 1000).state_dict()})  # torchvision's name -> resexp's
    unknown = sorted(set(saved) - set(names))
    if unknown:
        raise UserError(f"{path} has {unknown[0]}, which torchvision's ResNet-{depth} does not have")
    epochs = 90
    return Published(
        overrides=[
            "data=imagenet",
            "model=imagenet",
            f"model.depth={depth}",
            "model.mode=residual",
            "model.shortcut=B",
            "data.lighting=0",
            f"schedule.iterations={epochs * TORCHVISION_EPOCH}",
            f"schedule.milestones=[{30 * TORCHVISION_EPOCH},{60 * TORCHVISION_EPOCH}]",
        ],
        model={names[k]: v for k, v in saved.items()},
        net=f"torchvision ResNet-{depth}",
        trained=(
            "torchvision's reference recipe: 90 epochs of batch 256, lr 0.1 / 10 every 30 epochs, momentum 0.9, "
            "weight decay 1e-4, RandomResizedCrop(224) + flip (not the paper's scale augmentation), resize 256 + "
            "centre crop 224 to test"
        ),
        iterations=epochs * TORCHVISION_EPOCH,
    )


READERS = {"akamaster": akamaster, "torchvision": torchvision}


@dataclass
class Imported:
    path: Path
    net: str
    existed: bool = False  # the same file was imported there already: nothing written


def import_run(source: str, file: Path, name: str | None, data_root: str | None) -> Imported:
    """Make the run folder of the published net in FILE; one line, and nothing written, when
    anything about it is wrong."""
    from resexp.launch.jobs import plan, remove_empty
    from resexp.nets.build import build_model
    from resexp.rundir.folder import CONFIG, IMPORTED, PROVENANCE, STATUS, WEIGHTS, RunDir, config_yaml, write_json

    if source not in READERS:
        raise UserError(f"{source!r} is not a source resexp imports from: choose one of {', '.join(SOURCES)}")
    if not file.is_file():
        raise UserError(f"{file} is not a file")
    if name is not None and "," in name:  # Hydra would read a comma list as a sweep
        raise UserError(f"--name {name}: one folder name, without commas")
    content = file.read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    published = READERS[source](torch_file(file), file)
    overrides = published.overrides + [f"name={name or source}"] + ([f"data.root={data_root}"] if data_root else [])
    [job] = plan(overrides, multirun=False, trains=False)  # its recipe's batch need not fit this machine
    cfg = job.config
    net = build_model(cfg, published.model["head.2.weight"].shape[0])
    try:
        net.load_state_dict(published.model)
    except RuntimeError as e:
        raise UserError(f"{file} does not fit {published.net} as resexp builds it ({one_fit(e)})") from None
    provenance = {
        "source": source,
        "net": published.net,
        "file": file.name,
        "path": str(file.resolve()),
        "sha256": sha,
        "trained": published.trained,
        "iterations": published.iterations,
    }
    run = RunDir(job.run_dir)
    if job.run_dir.exists() and any(job.run_dir.iterdir()):
        before = run.imported()
        if before is not None and before.get("sha256") == sha:
            return Imported(job.run_dir, published.net, existed=True)
        what = f"{before.get('file')}, imported" if before is not None else "a run"
        raise RunDirError(f"{job.run_dir} holds {what} already: give --name NAME to import into another folder")
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_staging(job.run_dir)
    staging = job.run_dir.with_name(f"{STAGING_PREFIX}{job.run_dir.name}.importing-{os.getpid()}")
    try:
        staging.mkdir()
        folder = RunDir(staging)
        (staging / CONFIG).write_text(config_yaml(cfg))
        payload = {
            "format": FORMAT_TAG,
            "model": net.state_dict(),
            "fields": fields_of(identity.of(cfg)),
            "num_classes": int(published.model["head.2.weight"].shape[0]),
            "source": provenance,
        }
        buffer = io.BytesIO()  # written by Python, so that a full disk is an OSError: "No space left on device"
        torch.save(payload, buffer)
        (staging / WEIGHTS).write_bytes(buffer.getvalue())
        write_json(staging / PROVENANCE, provenance)
        write_json(
            folder.file(STATUS),
            {
                "status": IMPORTED,
                "step": published.iterations,
                "iterations": cfg.schedule.iterations,
                "identity": identity.digest(identity.of(cfg)),
            },
        )
        if job.run_dir.exists():
            job.run_dir.rmdir()  # empty: checked above
        os.rename(staging, job.run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty(job.run_dir.parent)
        raise
    return Imported(job.run_dir, published.net)


STAGING_PREFIX = "."  # a staging folder is hidden: readers of runs never look into hidden folders


def clear_stale_staging(run_dir: Path) -> None:
    """Remove what an import into `run_dir` killed before it finished left (its staging folder,
    named with the pid of a process that is gone)."""
    for staging in run_dir.parent.glob(f"{STAGING_PREFIX}{run_dir.name}.importing-*"):
        pid = staging.name.rpartition("-")[2]
        if not pid.isdigit() or not alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def one_fit(error: RuntimeError) -> str:
    """The first mismatch torch names in a failed load_state_dict."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0]
