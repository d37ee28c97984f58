"""`resexp report`: a table per mode x depth (mean +- std over seeds) beside the paper's numbers,
and a verdict per family on the degradation problem (He et al. 2015, Sec. 4.1 and 4.2).

Training error is the running training error of the last evaluation interval; test error is the
last evaluation's (final) and the lowest of all evaluations (best).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from resexp.rundir import Run

FORMATS = ("markdown", "csv", "json", "html")  # html: resexp.report_html, a file

# (data, family, mode, depth, shortcut) -> (test error %, source). Plain nets have no printed
# numbers; the two plain CIFAR values are read off Figure 6.
PAPER: dict[tuple, tuple[float, str]] = {
    ("cifar10", "cifar", "residual", 20, "A"): (8.75, "Table 6"),
    ("cifar10", "cifar", "residual", 32, "A"): (7.51, "Table 6"),
    ("cifar10", "cifar", "residual", 44, "A"): (7.17, "Table 6"),
    ("cifar10", "cifar", "residual", 56, "A"): (6.97, "Table 6"),
    ("cifar10", "cifar", "residual", 110, "A"): (6.43, "Table 6 (best of 5; mean 6.61 +- 0.16)"),
    ("cifar10", "cifar", "residual", 1202, "A"): (7.93, "Table 6"),
    ("cifar10", "cifar", "plain", 20, "-"): (9.5, "about, read off Fig. 6"),
    ("cifar10", "cifar", "plain", 56, "-"): (13.5, "about, read off Fig. 6"),
    ("imagenet", "imagenet", "plain", 18, "-"): (27.94, "Table 2, top-1 10-crop"),
    ("imagenet", "imagenet", "plain", 34, "-"): (28.54, "Table 2, top-1 10-crop"),
    ("imagenet", "imagenet", "residual", 18, "A"): (27.88, "Table 2, top-1 10-crop"),
    ("imagenet", "imagenet", "residual", 34, "A"): (25.03, "Tables 2-3, top-1 10-crop"),
    ("imagenet", "imagenet", "residual", 34, "B"): (24.52, "Table 3, top-1 10-crop"),
    ("imagenet", "imagenet", "residual", 34, "C"): (24.19, "Table 3, top-1 10-crop"),
}
COLUMNS = [
    "data",
    "net",
    "mode",
    "depth",
    "shortcut",
    "runs",
    "iterations",
    "final test error",
    "best test error",
    "final train error",
    "paper test error",
]


def groups(runs: list[Run]) -> dict[tuple, list[Run]]:
    """Runs that differ only in their seed, by (data, family, mode, depth, shortcut)."""
    out: dict[tuple, list[Run]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def final(run: Run, key: str) -> float:
    return run.rows[-1].get(key, math.nan) if run.rows else math.nan


def best(run: Run, key: str) -> float:
    values = [r[key] for r in run.rows if key in r and math.isfinite(r[key])]
    return min(values) if values else math.nan


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per group of seeds; diverged runs are counted but kept out of the means."""
    rows = []
    for key, members in groups(runs).items():
        data, family, mode, depth, shortcut = key
        ok = [r for r in members if not r.diverged]
        stats = {}
        for name, fn, metric in (
            ("final_test", final, "test/error"),
            ("best_test", best, "test/error"),
            ("final_train", final, "train/error"),
        ):
            stats[name] = mean_std([fn(r, metric) for r in ok if r.rows])
        paper = PAPER.get(key)
        rows.append(
            {
                "data": data,
                "family": family,
                "mode": mode,
                "depth": depth,
                "shortcut": shortcut,
                "net": members[0].label,
                "n": len(members),
                "complete": sum(r.complete for r in members),
                "diverged": sum(r.diverged for r in members),
                "seeds": [r.seed for r in members],
                "iterations": sorted({r.step for r in members}),
                "final_test_error": stats["final_test"],
                "best_test_error": stats["best_test"],
                "final_train_error": stats["final_train"],
                "paper_test_error": paper[0] if paper else None,
                "paper_source": paper[1] if paper else None,
            }
        )
    return rows


@dataclass
class Gap:
    """How much higher net a's final training error is than net b's (negative: lower), in points,
    and the seeds' noise: twice the larger of the two standard deviations."""

    a: str
    b: str
    points: float
    noise: float

    @property
    def within_noise(self) -> bool:
        return self.noise > 0 and abs(self.points) <= self.noise

    def __str__(self) -> str:
        word = "above" if self.points > 0 else "below"
        text = f"{self.a} training error {word} {self.b} by {abs(self.points):.2f} points"
        return text + (f" (within seed noise, 2 std = {self.noise:.2f})" if self.within_noise else "")


def gap(a: dict[str, Any], b: dict[str, Any]) -> Gap:
    (ma, sa), (mb, sb) = a["final_train_error"], b["final_train_error"]
    return Gap(name(a), name(b), ma - mb, 2 * max(sa, sb))


def name(row: dict[str, Any]) -> str:
    return f"{row['mode']}-{row['depth']}"


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per data set and family: does depth hurt the plain nets' training error (the degradation
    problem: reproduced when the deepest plain net trains worse than the shallowest by more than
    the seeds' noise) and help the residual nets'?"""
    lines = []
    for data, family in sorted({(r["data"], r["family"]) for r in rows}):
        mine = [r for r in rows if r["data"] == data and r["family"] == family and r["n"] > r["diverged"]]
        plain = {r["depth"]: r for r in mine if r["mode"] == "plain"}
        residual = {r["depth"]: r for r in mine if r["mode"] == "residual" and r["shortcut"] in ("A", "B")}
        if len(plain) < 2:
            lines.append(f"{data}/{family}: no verdict: needs plain nets of two depths (found {sorted(plain)})")
            continue
        low, high = min(plain), max(plain)
        degradation = gap(plain[high], plain[low])
        gaps = [degradation]
        if low in residual and high in residual:
            gaps.append(gap(residual[high], residual[low]))
        if high in residual:
            gaps.append(gap(residual[high], plain[high]))
        reproduced = degradation.points > 0 and not degradation.within_noise
        partial = sum(r["n"] - r["complete"] - r["diverged"] for r in mine)
        note = f" [partial: {partial} run(s) incomplete]" if partial else ""
        head = "degradation reproduced" if reproduced else "degradation NOT reproduced"
        lines.append(f"{data}/{family}: {head}: " + "; ".join(map(str, gaps)) + note)
    return lines


def fmt(ms: tuple[float, float], n: int) -> str:
    m, s = ms
    if math.isnan(m):
        return "-"
    return f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        n_ok = r["n"] - r["diverged"]
        runs = f"{r['complete']}/{r['n']} complete" + (f", {r['diverged']} diverged" if r["diverged"] else "")
        steps = (
            "-".join(str(s) for s in (r["iterations"][0], r["iterations"][-1]))
            if len(r["iterations"]) > 1
            else str(r["iterations"][0])
        )
        paper = "-" if r["paper_test_error"] is None else f"{r['paper_test_error']:.2f} ({r['paper_source']})"
        out.append(
            [
                r["data"],
                r["net"],
                r["mode"],
                str(r["depth"]),
                r["shortcut"],
                runs,
                steps,
                fmt(r["final_test_error"], n_ok),
                fmt(r["best_test_error"], n_ok),
                fmt(r["final_train_error"], n_ok),
                paper,
            ]
        )
    return out


def render(runs: list[Run], form: str = "markdown") -> str:
    """The report in one of FORMATS."""
    rows = summarise(runs)
    lines = verdicts(rows)
    problems = [f"{r.path}: {r.state}" for r in runs if not r.complete]
    if form == "json":
        clean = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()} for r in rows]
        return json.dumps({"rows": clean, "verdicts": lines, "not_complete": problems}, indent=1, allow_nan=True)
    if form == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(COLUMNS)
        writer.writerows(table_rows(rows))
        return buf.getvalue()
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    out.append("")
    out.append("Errors in %, mean ± std over seeds; training error = running error of the last evaluation interval.")
    out += [""] + [f"- {line}" for line in lines]
    if problems:
        out += ["", "Runs not complete:"] + [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"
