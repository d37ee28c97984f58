"""`resexp report`: a table with one row per experiment (every field that changes a result but
the seed: runs that differ in anything else are never averaged together), mean +- std over its
seeds beside the paper's numbers, and a verdict per comparable set on the degradation problem
(He et al. 2015, Sec. 4.1 and 4.2).

Training error is the running training error of the last evaluation interval; test error is the
last evaluation's (final) and the lowest of all evaluations (best). Each row lists its seeds, the
ones it lacks that its comparable rows have, and the ones not finished; with one seed per net the
seeds' noise is unknown, and the verdict says it cannot decide rather than call a gap reproduced.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resexp.rundir.experiments import experiments, jsonable, mean_std, settings_of
from resexp.rundir.read import Run

FORMATS = ("markdown", "csv", "json", "html")  # html: resexp.commands.report_html, a file


UNDECIDED = "degradation: cannot decide (one seed of a net: the seeds' noise is unknown; add seeds, e.g. seed=0,1,2)"


# What the net's name already says: the rest of an experiment's identity is its "settings".
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
    "settings",
    "mode",
    "depth",
    "shortcut",
    "seeds",
    "runs",
    "iterations",
    "final test error",
    "best test error",
    "final train error",
    "paper test error",
]


def final(run: Run, key: str) -> float:
    return run.rows[-1].get(key, math.nan) if run.rows else math.nan


def best(run: Run, key: str) -> float:
    values = [r[key] for r in run.rows if key in r and math.isfinite(r[key])]
    return min(values) if values else math.nan


def summarise(runs: list[Run], warn: Callable[[str], None] = lambda text: None) -> list[dict[str, Any]]:
    """One row per experiment; diverged runs are counted but kept out of the means."""
    groups = experiments(runs, warn)
    settings = settings_of(groups)
    rows = []
    for key, members in groups.items():
        first = members[0]
        ok = [r for r in members if not r.diverged]
        stats = {}
        for name, fn, metric in (
            ("final_test", final, "test/error"),
            ("best_test", best, "test/error"),
            ("final_train", final, "train/error"),
        ):
            stats[name] = mean_std([fn(r, metric) for r in ok if r.rows])
        paper = PAPER.get((first.data, first.family, first.mode, first.depth, first.shortcut))
        rows.append(
            {
                "data": first.data,
                "family": first.family,
                "mode": first.mode,
                "depth": first.depth,
                "shortcut": first.shortcut,
                "net": first.label,
                "settings": settings[key],
                "n": len(members),
                "complete": sum(r.complete for r in members),
                "diverged": sum(r.diverged for r in members),
                "seeds": [r.seed for r in members],
                "unfinished": [r.seed for r in members if not r.complete and not r.diverged and not r.imported],
                "missing": [],
                "iterations": first.iterations,
                "final_test_error": stats["final_test"],
                "best_test_error": stats["best_test"],
                "final_train_error": stats["final_train"],
                "imported": sum(r.imported for r in members),
                "evals": {
                    name: mean_std([r.evals[name]["test/error"] for r in ok if name in r.evals])
                    for name in sorted({n for r in members for n in r.evals})
                },
                "evaluated": {name: sum(name in r.evals for r in ok) for name in {n for r in members for n in r.evals}},
                "paper_test_error": paper[0] if paper else None,
                "paper_source": paper[1] if paper else None,
            }
        )
    for mine in comparable(rows).values():  # a seed its neighbours have and it lacks never started
        every = sorted({s for r in mine for s in r["seeds"]})
        for r in mine:
            r["missing"] = [s for s in every if s not in r["seeds"]]
    return rows


def comparable(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows that a verdict may compare: the same data, family and settings."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["data"], r["family"], r["settings"]), []).append(r)
    return out


@dataclass
class Gap:
    """How much higher net a's final training error is than net b's (negative: lower), in points,
    and the seeds' noise: twice the larger of the two standard deviations (NaN: unknown, one seed)."""

    a: str
    b: str
    points: float
    noise: float

    @property
    def known(self) -> bool:
        return math.isfinite(self.noise)

    @property
    def within_noise(self) -> bool:
        return self.known and abs(self.points) <= self.noise

    def __str__(self) -> str:
        word = "above" if self.points > 0 else "below"
        text = f"{self.a} training error {word} {self.b} by {abs(self.points):.2f} points"
        if not self.known:
            return text + " (noise unknown: one seed)"
        return text + (f" (within seed noise, 2 std = {self.noise:.2f})" if self.within_noise else "")


def gap(a: dict[str, Any], b: dict[str, Any]) -> Gap:
    (ma, sa), (mb, sb) = a["final_train_error"], b["final_train_error"]
    return Gap(name(a), name(b), ma - mb, 2 * max(sa, sb) if math.isfinite(sa) and math.isfinite(sb) else math.nan)


def name(row: dict[str, Any]) -> str:
    return f"{row['mode']}-{row['depth']}"


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per comparable set (data, family, settings): does depth hurt the plain nets' training error
    (the degradation problem: reproduced when the deepest plain net trains worse than the
    shallowest by more than twice the seeds' std) and help the residual nets'? With one seed of
    either net the noise is unknown: no verdict either way."""
    lines = []
    for (data, family, settings), mine in sorted(comparable(rows).items()):
        where = f"{data}/{family}" + ("" if settings == "-" else f" ({settings})")
        mine = [r for r in mine if r["n"] > r["diverged"]]
        plain = {r["depth"]: r for r in mine if r["mode"] == "plain"}
        residual = {r["depth"]: r for r in mine if r["mode"] == "residual" and r["shortcut"] in ("A", "B")}
        if len(plain) < 2:
            lines.append(f"{where}: no verdict: needs plain nets of two depths (found {sorted(plain)})")
            continue
        low, high = min(plain), max(plain)
        degradation = gap(plain[high], plain[low])
        gaps = [degradation]
        if low in residual and high in residual:
            gaps.append(gap(residual[high], residual[low]))
        if high in residual:
            gaps.append(gap(residual[high], plain[high]))
        partial = sum(len(r["unfinished"]) for r in mine)
        missing = sorted({s for r in mine for s in r["missing"]})
        note = f" [partial: {partial} run(s) incomplete]" if partial else ""
        note += f" [seeds missing from some nets: {', '.join(map(str, missing))}]" if missing else ""
        if not degradation.known:
            head = UNDECIDED
        elif degradation.points > 0 and not degradation.within_noise:
            head = "degradation reproduced"
        else:
            head = "degradation NOT reproduced"
        lines.append(f"{where}: {head}: " + "; ".join(map(str, gaps)) + note)
    return lines


def fmt(ms: tuple[float, float]) -> str:
    m, s = ms
    if math.isnan(m):
        return "-"
    return f"{m:.2f} ± {s:.2f}" if math.isfinite(s) else f"{m:.2f}"


def runs_cell(r: dict[str, Any]) -> str:
    text = f"{r['complete']}/{r['n']} complete"
    if r["imported"]:
        text = f"{r['imported']} imported" + (f", {text}" if r["imported"] < r["n"] else "")
    if r["diverged"]:
        text += f", {r['diverged']} diverged"
    if r["missing"]:
        text += f", seed {', '.join(map(str, r['missing']))} missing"
    return text


def eval_names(rows: list[dict[str, Any]]) -> list[str]:
    """The `resexp eval` protocols any row has numbers of (latest, latest+ten_crop, ...)."""
    return sorted({name for r in rows for name in r["evals"]})


def eval_cell(r: dict[str, Any], name: str) -> str:
    if name not in r["evals"]:
        return "-"
    done = r["evaluated"][name]
    alive = r["n"] - r["diverged"]
    return fmt(r["evals"][name]) + (f" ({done} of {alive} seeds)" if done < alive else "")


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    evals = eval_names(rows)
    for r in rows:
        paper = "-" if r["paper_test_error"] is None else f"{r['paper_test_error']:.2f} ({r['paper_source']})"
        out.append(
            [
                r["data"],
                r["net"],
                r["settings"],
                r["mode"],
                str(r["depth"]),
                r["shortcut"],
                " ".join(map(str, r["seeds"])),
                runs_cell(r),
                str(r["iterations"]),
                fmt(r["final_test_error"]),
                fmt(r["best_test_error"]),
                fmt(r["final_train_error"]),
                *(eval_cell(r, name) for name in evals),
                paper,
            ]
        )
    return out


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The columns and cells of the report's table (a settings column only when settings vary)."""
    every = COLUMNS[:-1] + [f"eval test error ({name})" for name in eval_names(rows)] + COLUMNS[-1:]
    columns = every if any(r["settings"] != "-" for r in rows) else [c for c in every if c != "settings"]
    cells = [[c for c, column in zip(row, every, strict=True) if column in columns] for row in table_rows(rows)]
    return columns, cells


def render(runs: list[Run], form: str = "markdown", warn: Callable[[str], None] = lambda text: None) -> str:
    """The report in one of FORMATS."""
    rows = summarise(runs, warn)
    lines = verdicts(rows)
    problems = [f"{r.path}: {r.state}" for r in runs if not r.complete and not r.imported]
    if form == "json":
        return json.dumps(jsonable({"rows": rows, "verdicts": lines, "not_complete": problems}), indent=1) + "\n"
    columns, cells = table(rows)
    if form == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows(cells)
        return buf.getvalue()
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(row) + " |" for row in cells]
    out.append("")
    out.append(
        "Errors in %, mean ± std over seeds (one row per experiment: runs differing in anything but the seed are "
        "never averaged); training error = running error of the last evaluation interval."
        + (" eval test error: resexp eval's numbers (RUN/eval/NAME.json)." if eval_names(rows) else "")
    )
    out += [""] + [f"- {line}" for line in lines]
    if problems:
        out += ["", "Runs not complete:"] + [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"
