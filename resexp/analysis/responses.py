"""Layer responses, He et al. 2015, Sec. 4.2 and Figure 7: "The responses are the outputs of each
3x3 layer, after BN and before other nonlinearity (ReLU/addition)". For each net, the standard
deviation of each 3x3 layer's response over the test set, in eval mode; by layer index, and
sorted by magnitude. The paper does not say whether the std is taken over all values of a layer
(images, channels and positions: the default here) or per channel and then averaged
(`--per-channel`); both are computed from the same sums.

The paper's claims: residual functions are generally closer to zero than the non-residual ones,
so residual nets' responses are smaller than their plain counterparts' at the same depth, and the
deeper a residual net, the smaller its responses ("an individual layer of ResNets tends to modify
the signal less"). These are claims about trained nets, decided on nets trained to convergence
only (resexp.analysis.verdict.on_trained). Each comparison is of the median std over layers, averaged over seeds, and
counts only beyond the seeds' noise (twice the larger std over seeds of the two nets): with one
seed of a net the noise is unknown and the comparison cannot decide.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from resexp.analysis.protocol import Options, colour_of, pyplot
from resexp.analysis.subjects import Subject
from resexp.analysis.verdict import AGREES, DISAGREES, UNDECIDED, Verdict, judged_on, on_trained, overall


def response_layers(model: nn.Module) -> list[nn.Module]:
    """The batch norm right after each 3x3 convolution, in the order of the forward pass (stem,
    then each block's body; 1x1 projections and 7x7 stems are not 3x3 layers); where no BN follows
    a 3x3 conv (model.norm=none, a pre-activation block's last conv) the conv itself."""
    leaves = [m for m in model.modules() if next(m.children(), None) is None]  # in forward order
    layers = []
    for i, module in enumerate(leaves):
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            following = leaves[i + 1] if i + 1 < len(leaves) else None
            layers.append(following if isinstance(following, nn.BatchNorm2d) else module)
    return layers


@contextmanager
def recording(layers: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Forward hooks that sum each layer's output per channel ((3, C): count, sum, sum of squares,
    in float64); removed on exit, whatever happens."""
    sums: list[torch.Tensor] = [torch.zeros(3, 0, dtype=torch.float64) for _ in layers]

    def hook(index: int):
        def add(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            out = output.detach().double().transpose(0, 1).flatten(1)  # (C, values)
            count = torch.full((out.shape[0],), float(out.shape[1]), dtype=torch.float64)
            new = torch.stack([count, out.sum(1).cpu(), out.square().sum(1).cpu()])
            sums[index] = new if sums[index].shape[1] == 0 else sums[index] + new

        return add

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        yield sums
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def response_stds(model: nn.Module, batches, limit: int | None = None, per_channel: bool = False) -> list[float]:
    """The std of each 3x3 layer's response over the evaluation batches (at most `limit` images)."""
    return responses(model, batches, limit, per_channel)[0]


def std(sums: torch.Tensor) -> float:
    """The std of all values from (count, sum, sum of squares)."""
    count, total, squares = sums
    return float((squares / count - (total / count) ** 2).clamp_min(0).sqrt())


@torch.no_grad()
def responses(
    model: nn.Module, batches, limit: int | None = None, per_channel: bool = False
) -> tuple[list[float], int]:
    """The std of each 3x3 layer's response over the evaluation batches (at most `limit` images),
    over all its values or per channel and averaged; and how many images that was."""
    model.eval()
    seen = 0
    with recording(response_layers(model)) as sums:
        for x, _ in batches:
            if limit is not None and seen >= limit:
                break
            x = x[: limit - seen] if limit is not None else x
            model(x)
            seen += len(x)
    if per_channel:
        return [statistics.fmean(std(c) for c in s.T) for s in sums], seen
    return [std(s.sum(1)) for s in sums], seen


COLUMNS = ["net", "seeds", "3x3 layers", "median std", "mean std", "max std", "state"]


def measure(net: Subject, options: Options, base: Path, progress) -> list[dict]:
    progress(f"responses: {net.name}")
    stds, seen = responses(net.model, net.data.evals["test"], options.images, options.per_channel)
    return [{**net.record(), "images": seen, "layers": len(stds), "std": stds, "median": statistics.median(stds)}]


def rows(records: list[dict]) -> list[list[str]]:
    """One row per net, over its seeds."""
    return [
        [
            name,
            str(len(g)),
            str(g[0]["layers"]),
            f"{mean_of(g, 'median'):.3f}",
            f"{statistics.fmean(statistics.fmean(r['std']) for r in g):.3f}",
            f"{max(max(r['std']) for r in g):.3f}",
            g[0]["state"],
        ]
        for name, g in by_net(records).items()
    ]


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


def smaller(a: list[dict], b: list[dict]) -> tuple[str, str]:
    """Whether net a's responses are smaller than net b's beyond the seeds' noise: (outcome, numbers)."""
    ma, mb = mean_of(a, "median"), mean_of(b, "median")
    text = f"{a[0]['net']} {ma:.3f} vs {b[0]['net']} {mb:.3f}"
    if len(a) < 2 or len(b) < 2:
        return UNDECIDED, text + " (one seed: noise unknown)"
    noise = 2 * max(statistics.stdev(r["median"] for r in g) for g in (a, b))
    text += f" (2 std over seeds {noise:.3f})"
    if abs(mb - ma) <= noise:
        return UNDECIDED, text
    return (AGREES if ma < mb else DISAGREES), text


def verdicts(records: list[dict]) -> list[Verdict]:
    groups = by_net(records)
    """Fig. 7 is of trained nets: decided on the nets trained to convergence."""
    records = [r for g in groups.values() for r in g]
    return on_trained(records, lambda trained: decide(by_net(trained)))


def decide(groups: dict[str, list[dict]]) -> list[Verdict]:
    """Residual vs plain at each depth, and each deeper residual net vs the next shallower one
    (option A, B or C, whichever is there); median std over layers, mean over seeds."""
    mode = {name: g[0]["mode"] for name, g in groups.items()}
    depth = {name: g[0]["depth"] for name, g in groups.items()}
    alike = {
        name: (g[0].get("settings", "-"), g[0]["shortcut"] if g[0]["mode"] == "residual" else "")
        for name, g in groups.items()
    }
    residual = sorted((n for n in groups if mode[n] == "residual"), key=lambda n: (alike[n], depth[n]))
    pairs = [
        (r, p)
        for r in residual
        for p in groups
        if mode[p] == "plain" and depth[p] == depth[r] and alike[p][0] == alike[r][0]
    ]
    deeper = [
        (d, s) for s, d in zip(residual, residual[1:], strict=False) if alike[d] == alike[s] and depth[d] > depth[s]
    ]
    out = []
    for claim, compared in (
        ("residual nets respond less than plain nets of the same depth", pairs),
        ("the deeper a residual net, the smaller its responses", deeper),
    ):
        if not compared:
            why = "needs " + ("a residual and a plain net of one depth" if compared is pairs else "two residual depths")
            out.append(Verdict(claim, "He et al. 2015, Sec. 4.2, Fig. 7", UNDECIDED, why))
            continue
        results = [smaller(groups[a], groups[b]) for a, b in compared]
        why = "median response std: " + "; ".join(text for _, text in results)
        why += "; criterion: smaller by more than twice the larger std over seeds"
        judged = [r for a, b in compared for r in groups[a] + groups[b]]
        out.append(
            Verdict(claim, "He et al. 2015, Sec. 4.2, Fig. 7", overall(o for o, _ in results), why, judged_on(judged))
        )
    return out


def figure(nets: list[Subject], records: list[dict]):
    groups = by_net(records)
    plt = pyplot()
    colour = colour_of(nets)
    fig, (by_index, by_size) = plt.subplots(2, 1, figsize=(8, 7))
    for name, group in groups.items():
        curve = mean_curve(group)
        mode = group[0]["mode"]
        label = name + (f" ({len(group)} seeds)" if len(group) > 1 else "")
        style = dict(color=colour[name], ls="--" if mode == "plain" else "-", lw=1.6, label=label)
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
