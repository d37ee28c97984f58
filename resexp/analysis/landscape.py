"""Loss landscapes, Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets" (Fig. 5): the
loss and error of a trained net at w + a*d1 + b*d2, for two random directions d1, d2 that are
filter-normalised: each filter of a direction (one output channel of a conv, one row of the
linear layer) is rescaled to the norm of the same filter of the weights, and the directions are
zero for BN parameters and biases, as in the paper. BN uses its running statistics (eval mode),
as in the paper's code.

A 1D curve along d1 (2 * grid - 1 points) and a 2D grid of grid x grid points over
[-span, span]^2 (default 21 x 21 over [-1, 1], step 0.1; Li et al. used 51 x 51), on the first
`images` training images without augmentation (default 512). The points are computed in chunks
(the line, then one grid row per chunk), each written to a file as it finishes, so a computation
that is killed resumes where it stopped; on a CPU, --workers processes compute chunks side by
side; on a GPU, one process takes the images in large batches.

Their finding: ResNet-56's surface is smooth and nearly convex around the minimum, the same 56
layers without shortcuts give a chaotic, non-convex one, and 110 plain layers a worse one still.
Measured here, in the basin around the weights (the grid points whose loss is within CEILING of the
lowest, each with its eight neighbours in the basin too; outside it the loss explodes and any
surface looks convex): the surface's 2x2 Hessian at each point (central differences on the grid),
and the share of points with significant negative curvature, |lambda_min / lambda_max| > SIGNIFICANT
with lambda_min < 0: Li et al.'s convexity map (their Fig. 7) on the plane the figure shows; and the
basin's size (a wider basin is a flatter one). The claim is about trained nets: decided on nets
trained to convergence only (resexp.analysis.verdict.on_trained). The verdict compares each residual net with the
plain net of its depth: smoother when its non-convex share is lower by more than MARGIN, or, as
convex, its basin is WIDER; with fewer than MIN_BASIN measured points in either basin, or no
difference beyond those margins at this resolution, it cannot decide.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resexp.analysis.protocol import Options, pyplot
from resexp.analysis.subjects import Subject, load
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED, Verdict, judged_on, on_trained, overall
from resexp.rundir.folder import atomic_write

DEFAULT_IMAGES = 512
WEIGHTS = "weights.pt"  # the net's weights, pinned when a landscape's first chunk is computed


def stored_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def readable(chunk: Path) -> bool:
    """A finished chunk: a list of points (a chunk file damaged since is computed again)."""
    try:
        return isinstance(json.loads(chunk.read_text()), list)
    except (OSError, ValueError):
        return False


def filter_normalised(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random direction in weight space, each filter scaled to its weight filter's norm; zero
    for BN parameters and biases (every parameter of one dimension)."""
    direction = {}
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        scale = p.detach().flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1).clamp_min(1e-12)
        direction[name] = d * scale.view(-1, *([1] * (p.dim() - 1)))
    return direction


def training_images(subject: Subject, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` training images, normalised, without augmentation (CIFAR and synthetic);
    for folder datasets, the first augmented batches of the run's first epoch."""
    train = subject.data.train
    if hasattr(train, "x"):
        return train.normalize(train.x[:n]), train.y[:n]
    xs, ys = [], []
    for x, y in train.batches(0):
        xs.append(x)
        ys.append(y)
        if sum(map(len, ys)) >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


class Surface:
    """The net at w + a*d1 + b*d2: loss and error (%) on fixed images."""

    def __init__(
        self,
        model: nn.Module,
        directions: list[dict[str, torch.Tensor]],
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 1000,
    ) -> None:
        self.model, self.directions, self.x, self.y, self.batch_size = model.eval(), directions, x, y, batch_size
        self.origin = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def at(self, a: float, b: float) -> tuple[float, float]:
        d1, d2 = self.directions
        for name, p in self.model.named_parameters():
            p.copy_(self.origin[name] + a * d1[name] + b * d2[name])
        loss, errors = 0.0, 0
        for i in range(0, len(self.y), self.batch_size):
            logits = self.model(self.x[i : i + self.batch_size]).float()
            y = self.y[i : i + self.batch_size]
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            errors += (logits.argmax(1) != y).sum().item()
        for name, p in self.model.named_parameters():
            p.copy_(self.origin[name])
        return loss / len(self.y), 100.0 * errors / len(self.y)


def chunks(options: Options) -> dict[str, list[tuple[float, float]]]:
    """The points of each chunk: the 1D line along d1, then one row of the 2D grid per chunk."""
    line = np.linspace(-options.span, options.span, 2 * options.grid - 1)
    axis = np.linspace(-options.span, options.span, options.grid)
    out = {"line": [(float(a), 0.0) for a in line]}
    for j, b in enumerate(axis):
        out[f"row-{j:03d}"] = [(float(a), float(b)) for a in axis]
    return out


def compute_chunk(job: dict[str, Any], subject: Subject | None = None) -> str:
    """One chunk, in this process (`subject` given) or in a worker (the net built from its run's
    config with the weights pinned in the chunks' folder, never the run's checkpoint of the moment:
    a run still training writes new ones): compute the chunk's points at the saved directions and
    write them. Returns the chunk's name."""
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    folder = Path(job["folder"])
    if subject is None:
        subject = load(job["run"], True, torch.device(job["device"]), job["data_root"], lambda text: None)
        subject.model.load_state_dict(torch.load(folder / WEIGHTS, map_location=subject.device, weights_only=True))
    directions = torch.load(folder / "directions.pt", map_location=subject.device, weights_only=True)
    x, y = training_images(subject, job["images"])
    surface = Surface(subject.model, directions, x, y)
    values = [[a, b, *surface.at(a, b)] for a, b in job["points"]]
    atomic_write(folder / f"{job['name']}.json", json.dumps(values))
    return job["name"]


def landscape(subject: Subject, options: Options, folder: Path, progress) -> dict[str, Any]:
    """Compute (or finish) one net's landscape in `folder`; returns the 1D and 2D values. The
    chunks already there are used only if they were computed on the same weights (the key of the
    checkpoint the net was read from) with the same settings; their weights and directions are
    pinned in the folder, so every chunk sees one net."""
    images = len(training_images(subject, options.images or DEFAULT_IMAGES)[1])  # what there is, at most that
    meta = {
        "grid": options.grid,
        "span": options.span,
        "images": images,
        "seed": options.seed,
        "state": subject.state,
        "key": subject.key,
    }
    if folder.exists() and stored_meta(folder) != meta:
        progress(f"landscape: {subject.name}: the chunks in {folder} are of other weights or settings; starting again")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "meta.json").exists():
        generator = torch.Generator().manual_seed(options.seed)
        directions = [filter_normalised(subject.model, generator) for _ in range(2)]
        atomic_write(folder / WEIGHTS, lambda f: torch.save(subject.model.state_dict(), f))
        atomic_write(folder / "directions.pt", lambda f: torch.save(directions, f))
        atomic_write(folder / "meta.json", json.dumps(meta))  # last: the folder is whole
    todo = {name: points for name, points in chunks(options).items() if not readable(folder / f"{name}.json")}
    for name in todo:
        if (folder / f"{name}.json").exists():
            progress(f"landscape: {subject.name}: {folder / name}.json is damaged; computing it again")
    if todo:
        progress(f"landscape: {subject.name}: {len(todo)} of {len(chunks(options))} chunks to compute")
    jobs = [
        {
            "run": subject.run,
            "at_init": options.at_init,
            "device": str(subject.device),
            "data_root": subject.cfg.data.root,
            "folder": str(folder),
            "images": images,
            "name": name,
            "points": points,
        }
        for name, points in todo.items()
    ]
    workers = 1 if subject.device.type == "cuda" else min(options.workers, len(jobs))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for done, name in enumerate(pool.map(compute_chunk, [{**j, "threads": threads} for j in jobs]), 1):
                progress(f"landscape: {subject.name}: chunk {name} done ({done}/{len(jobs)})")
    else:
        for done, job in enumerate(jobs, 1):
            compute_chunk(job, subject)
            progress(f"landscape: {subject.name}: chunk {job['name']} done ({done}/{len(jobs)})")
    values = {name: json.loads((folder / f"{name}.json").read_text()) for name in chunks(options)}
    line = np.array(values.pop("line"))
    grid = np.array([values[name] for name in sorted(values)])  # (rows b, columns a, 4)
    return {"line": line.tolist(), "grid": grid.tolist(), **shape_of(grid[:, :, 2]), "images": images}


CEILING = 10.0  # the basin: points whose loss is within this of the lowest (the figures clip there too)
SIGNIFICANT = 0.1  # |lambda_min / lambda_max| above which a point's negative curvature counts
MIN_BASIN = 9  # measured points a basin needs for its shape to be judged
MARGIN = 0.05  # a difference in non-convex share that counts
WIDER = 1.2  # a basin this many times as many points as another's is flatter


def shape_of(loss: np.ndarray) -> dict[str, Any]:
    """The basin's shape on a grid of losses (rows b, columns a): its points, how many of them can
    be measured (all eight neighbours in the basin), the share of those with significant negative
    curvature (NaN when fewer than MIN_BASIN), and its strict local minima (3x3)."""
    basin = loss <= loss.min() + CEILING
    centre = loss[1:-1, 1:-1]
    d_aa = loss[1:-1, 2:] - 2 * centre + loss[1:-1, :-2]  # the grid step cancels in every ratio below
    d_bb = loss[2:, 1:-1] - 2 * centre + loss[:-2, 1:-1]
    d_ab = (loss[2:, 2:] - loss[2:, :-2] - loss[:-2, 2:] + loss[:-2, :-2]) / 4
    half_trace, spread = (d_aa + d_bb) / 2, np.sqrt(((d_aa - d_bb) / 2) ** 2 + d_ab**2)
    low, high = half_trace - spread, half_trace + spread  # the Hessian's eigenvalues at each point
    around = [(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
    measured = basin[1:-1, 1:-1] & np.stack(
        [basin[1 + i : basin.shape[0] - 1 + i, 1 + j : basin.shape[1] - 1 + j] for i, j in around]
    ).all(0)
    bent = (low < 0) & (-low > SIGNIFICANT * np.maximum(high, 0))
    neighbours = np.stack([loss[1 + i : loss.shape[0] - 1 + i, 1 + j : loss.shape[1] - 1 + j] for i, j in around])
    minima = int(((centre[None] < neighbours).all(0) & measured).sum())
    share = float(bent[measured].mean()) if measured.sum() >= MIN_BASIN else float("nan")
    return {
        "nonconvex_share": share,
        "basin_points": int(basin.sum()),
        "measured_points": int(measured.sum()),
        "local_minima": minima,
    }


COLUMNS = [
    "net",
    "seed",
    "loss at the weights",
    "grid",
    "images",
    "basin points",
    "measurable",
    "non-convex share",
    "local minima",
    "max loss",
]


def measure(net: Subject, options: Options, base: Path, progress) -> list[dict]:
    """The surface, computed in chunks under BASE.chunks/ (a killed analysis goes on from them)."""
    settings = f"grid{options.grid}-span{options.span:g}-images{options.images or DEFAULT_IMAGES}-seed{options.seed}"
    folder = base.parent / f"{base.name}.chunks" / f"{net.run.path.name}-{settings}"
    return [{**net.record(), **landscape(net, options, folder, progress)}]


def rows(records: list[dict]) -> list[list[str]]:
    out = []
    for r in records:
        grid = np.array(r["grid"])
        centre = grid[grid.shape[0] // 2, grid.shape[1] // 2, 2]
        out.append(
            [
                r["net"],
                str(r["seed"]),
                f"{centre:.3f}",
                f"{grid.shape[0]}x{grid.shape[1]}",
                str(r["images"]),
                str(r["basin_points"]),
                str(r["measured_points"]),
                "-" if math.isnan(r["nonconvex_share"]) else f"{r['nonconvex_share']:.2f}",
                str(r["local_minima"]),
                f"{grid[:, :, 2].max():.3g}",
            ]
        )
    return out


def basin(r: dict) -> str:
    if math.isnan(r["nonconvex_share"]):
        return (
            f"a basin of {r['basin_points']} grid points, {r['measured_points']} measurable: too few (a smaller --span)"
        )
    return f"non-convex share {r['nonconvex_share']:.2f} of a basin of {r['basin_points']} points"


def compare(residual: dict, plain: dict) -> str:
    """Whether the residual net's surface is smoother than the plain net's, by the criteria above."""
    if math.isnan(residual["nonconvex_share"]) or math.isnan(plain["nonconvex_share"]):
        return UNDECIDED
    gap = plain["nonconvex_share"] - residual["nonconvex_share"]
    if abs(gap) > MARGIN:
        return AGREES if gap > 0 else DISAGREES
    wider = residual["basin_points"] / max(plain["basin_points"], 1)
    if wider >= WIDER or wider <= 1 / WIDER:
        return AGREES if wider >= WIDER else DISAGREES
    return UNDECIDED


def verdicts(records: list[dict]) -> list[Verdict]:
    """Li et al.'s claim is about trained nets: decided on the nets trained to convergence."""
    return on_trained(records, decide)


def decide(records: list[dict]) -> list[Verdict]:
    parts = [f"{r['net']} s{r['seed']}: {basin(r)}" for r in records]
    pairs = [
        (r, p)
        for r in records
        for p in records
        if r["mode"] == "residual"
        and p["mode"] == "plain"
        and (r["depth"], r["seed"], r.get("settings")) == (p["depth"], p["seed"], p.get("settings"))
    ]
    claim = "with shortcuts the loss surface is smoother and closer to convex than without"
    if not pairs:
        why = f"{'; '.join(parts)}; needs a plain and a residual net of one depth and seed"
        return [Verdict(claim, "Li et al. 2018, Figs. 5 and 7", UNDECIDED, why, judged_on(records))]
    outcome = overall(compare(r, p) for r, p in pairs)
    criterion = (
        f"criterion: non-convex share (|lambda_min/lambda_max| > {SIGNIFICANT:g}, lambda_min < 0) lower by more than "
        f"{MARGIN:g}, or as convex and a basin {WIDER:g}x as wide; a basin needs {MIN_BASIN} measurable points"
    )
    if outcome == UNDECIDED and all(compare(r, p) == UNDECIDED for r, p in pairs):
        criterion += " (no difference at this resolution, or a basin too small: a smaller --span or a finer --grid)"
    judged = [r for pair in pairs for r in pair]
    return [
        Verdict(claim, "Li et al. 2018, Figs. 5 and 7", outcome, f"{'; '.join(parts)}; {criterion}", judged_on(judged))
    ]


def figure(nets: list[Subject], records: list[dict]):
    plt = pyplot()
    n = len(records)
    fig = plt.figure(figsize=(4.2 * n, 11))
    for k, r in enumerate(records):
        line, grid = np.array(r["line"]), np.array(r["grid"])
        ax = fig.add_subplot(3, n, k + 1)
        ax.plot(line[:, 0], line[:, 2], color="#1f77b4", label="loss")
        ax2 = ax.twinx()
        ax2.plot(line[:, 0], line[:, 3], color="#d62728", ls="--", label="error (%)")
        ax.set(title=f"{r['net']} s{r['seed']}", xlabel="a (along d1)", ylabel="loss")
        ax2.set_ylabel("error (%)")
        a, b, loss = grid[:, :, 0], grid[:, :, 1], grid[:, :, 2]
        contour = fig.add_subplot(3, n, n + k + 1)
        levels = np.linspace(loss.min(), min(loss.max(), loss.min() + 10), 30)
        if levels[-1] > levels[0]:
            contour.contour(a, b, loss, levels=levels, cmap="viridis", linewidths=0.8)
        else:  # e.g. Fixup at initialisation: a zero classifier gives the same loss everywhere
            contour.text(0.5, 0.5, f"flat: loss {loss.min():.3g} everywhere", ha="center", transform=contour.transAxes)
        contour.set(xlabel="a", ylabel="b", aspect="equal")
        surface = fig.add_subplot(3, n, 2 * n + k + 1, projection="3d")
        surface.plot_surface(a, b, np.minimum(loss, loss.min() + 10), cmap="viridis", linewidth=0)
        surface.set(xlabel="a", ylabel="b", zlabel="loss")
    fig.suptitle("Loss around the trained weights along two filter-normalised directions (Li et al. 2018, Fig. 5)")
    fig.tight_layout()
    return fig
