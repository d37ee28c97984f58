"""Layer responses, He et al. 2015, Sec. 4.2 and Figure 7: "The responses are the outputs of each
3x3 layer, after BN and before other nonlinearity (ReLU/addition)". For each net, the standard
deviation of each 3x3 layer's response over the test set (all images, channels and positions),
in eval mode; by layer index, and sorted by magnitude.

The paper's claim: residual functions are generally closer to zero than the non-residual ones,
so residual nets' responses are smaller than their plain counterparts', and the deeper a
residual net, the smaller its responses ("an individual layer of ResNets tends to modify the
signal less").
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from resexp.analysis import Options, Result, colour_of, pyplot
from resexp.analysis.subjects import Subject


def response_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The batch norm right after each 3x3 convolution, in the order of the forward pass (stem,
    then each block's body; 1x1 projections and 7x7 stems are not 3x3 layers)."""
    layers, previous = [], None
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d) and previous.kernel_size == (3, 3):
            layers.append(module)
        if next(module.children(), None) is None:  # a leaf: the modules in forward order
            previous = module
    return layers


@contextmanager
def recording(layers: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Forward hooks that sum each layer's output (count, sum, sum of squares, in float64);
    removed on exit, whatever happens."""
    sums = [torch.zeros(3, dtype=torch.float64) for _ in layers]

    def hook(index: int):
        def add(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            out = output.detach().double()
            sums[index] += torch.stack(
                [torch.tensor(out.numel(), dtype=torch.float64), out.sum().cpu(), out.square().sum().cpu()]
            )

        return add

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        yield sums
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def response_stds(model: nn.Module, batches, limit: int | None = None) -> list[float]:
    """The std of each 3x3 layer's response over the evaluation batches (at most `limit` images)."""
    return responses(model, batches, limit)[0]


@torch.no_grad()
def responses(model: nn.Module, batches, limit: int | None = None) -> tuple[list[float], int]:
    """The std of each 3x3 layer's response over the evaluation batches (at most `limit` images),
    and how many images that was."""
    model.eval()
    seen = 0
    with recording(response_layers(model)) as sums:
        for x, _ in batches:
            if limit is not None and seen >= limit:
                break
            x = x[: limit - seen] if limit is not None else x
            model(x)
            seen += len(x)
    return [float((s[2] / s[0] - (s[1] / s[0]) ** 2).clamp_min(0).sqrt()) for s in sums], seen


def analyze(nets: list[Subject], options: Options, base: Path, progress) -> Result:
    records = []
    for net in nets:
        progress(f"responses: {net.name}")
        stds, seen = responses(net.model, net.data.evals["test"], options.images)
        records.append(
            {**net.record(), "images": seen, "layers": len(stds), "std": stds, "median": statistics.median(stds)}
        )
    groups = by_net(records)
    columns = ["net", "seeds", "3x3 layers", "median std", "mean std", "max std", "state"]
    rows = [
        [
            name,
            str(len(g)),
            str(g[0]["layers"]),
            f"{mean_of(g, 'median'):.3f}",
            f"{statistics.fmean(statistics.fmean(r['std']) for r in g):.3f}",
            f"{max(max(r['std']) for r in g):.3f}",
            g[0]["state"],
        ]
        for name, g in groups.items()
    ]
    return Result("responses", records, columns, rows, verdicts(groups), figure(nets, groups))


def by_net(records: list[dict]) -> dict[str, list[dict]]:
    """Records of one net over its seeds, in depth order, plain before residual."""
    out: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: (r["mode"], r["depth"], r["shortcut"], r["seed"])):
        out.setdefault(r["net"], []).append(r)
    return out


def mean_of(group: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in group)


def mean_curve(group: list[dict]) -> list[float]:
    return [statistics.fmean(values) for values in zip(*(r["std"] for r in group), strict=True)]


def verdicts(groups: dict[str, list[dict]]) -> list[str]:
    """Compare medians of the per-layer stds: residual vs plain at each depth, and deeper vs
    shallower residual nets (option A, B or C, whichever is there)."""
    median = {name: mean_of(g, "median") for name, g in groups.items()}
    mode = {name: g[0]["mode"] for name, g in groups.items()}
    depth = {name: g[0]["depth"] for name, g in groups.items()}
    residual = sorted((n for n in groups if mode[n] == "residual"), key=depth.get)
    pairs = [(r, p) for r in residual for p in groups if mode[p] == "plain" and depth[p] == depth[r]]
    parts, agree = [], []
    for r, p in pairs:
        agree.append(median[r] < median[p])
        parts.append(f"{r} {median[r]:.3f} vs {p} {median[p]:.3f}")
    for shallow, deep in zip(residual, residual[1:], strict=False):
        if depth[deep] > depth[shallow]:
            agree.append(median[deep] < median[shallow])
            parts.append(f"{deep} {median[deep]:.3f} vs {shallow} {median[shallow]:.3f}")
    if not agree:
        return ["responses: no verdict: needs a residual and a plain net of one depth, or two residual depths"]
    head = "agrees with" if all(agree) else "does NOT agree with" if not any(agree) else "partly agrees with"
    return [
        f"responses: median response std {'; '.join(parts)}: {head} the paper (Sec. 4.2, Fig. 7: residual "
        "responses smaller than plain, and smaller still in deeper residual nets)"
    ]


def figure(nets: list[Subject], groups: dict[str, list[dict]]):
    plt = pyplot()
    colour = colour_of(nets)
    fig, (by_index, by_size) = plt.subplots(2, 1, figsize=(8, 7))
    for name, group in groups.items():
        curve = mean_curve(group)
        mode, depth = group[0]["mode"], group[0]["depth"]
        label = name + (f" ({len(group)} seeds)" if len(group) > 1 else "")
        style = dict(color=colour[(mode, depth)], ls="--" if mode == "plain" else "-", lw=1.6, label=label)
        by_index.plot(range(1, len(curve) + 1), curve, **style)
        by_size.plot(range(1, len(curve) + 1), sorted(curve, reverse=True), **style)
    by_index.set_xlabel("layer index (original)")
    by_size.set_xlabel("layer index (sorted by magnitude)")
    for ax in (by_index, by_size):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
    by_index.legend(fontsize=8)
    by_index.set_title("Standard deviation of the 3x3 layers' responses on the test set (He et al. Fig. 7)")
    fig.tight_layout()
    return fig
