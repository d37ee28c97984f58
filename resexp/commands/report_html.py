"""`resexp report FOLDER --format html`: one self-contained page (figures embedded as data URIs,
styles inline, nothing fetched) with the curves, the table and verdict of `resexp report`, and
every analysis of FOLDER/analysis that has been run, each with what to look at and where it
comes from. Opens in any browser, offline; mail it or put it on a course page as it is."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

from resexp.analysis.driver import stored
from resexp.commands.report import summarise, table, verdicts
from resexp.rundir.folder import atomic_write
from resexp.rundir.read import Run, readable_runs

ABOUT = {
    "curves": "Training error (thin, dashed) and test error (bold) against iterations, plain nets left, residual "
    "right, as in He et al. 2015, Figures 1, 4 and 6. The degradation problem shows on the left: the deeper plain "
    "net's <em>training</em> error is higher, so it is not overfitting; on the right the deeper net is not worse.",
    "responses": "He et al. 2015, Fig. 7: the standard deviation of each 3x3 layer's response (after BN, before the "
    "addition and ReLU) on the test set. Look at whether the residual curves lie below the plain ones, and the "
    "deeper residual net's below the shallower one's: residual blocks learn small corrections to the identity.",
    "gradients": "Gradient flow on one training batch: the norm of the loss gradient for each conv layer's weights "
    "and each block's input, at initialisation (dotted) and at the checkpoint (solid). If plain nets failed "
    "because gradients vanish, their early layers would sit orders of magnitude below the last ones; He et al. "
    "(Sec. 4.1) argue that batch norm prevents that.",
    "lesion": "Veit, Wilber and Belongie 2016, Figs. 3 and 5: test error with one block removed (left), and with k "
    "random blocks removed (right). In a residual net the signal still flows through the shortcut, so removing a "
    "block should barely matter and the error should rise smoothly with k, like an ensemble losing members; in a "
    "plain net, any removal should send the error to chance (dashed grey).",
    "signal": "How a signal and its gradient travel through each net, on one training batch: the std of the "
    "stream after each block (left), each residual branch's output norm against its shortcut's (middle: below the "
    "dotted line a block is close to the identity; a red x marks a dead branch), and the gradient's norm at each "
    "position (right). Look at which lines fall or climb by orders of magnitude toward the input: without BN and "
    "with Xavier init a plain net's signal and gradient vanish; with BN a deep plain net's gradient explodes toward "
    "the input at initialisation; shortcuts keep it within bounds with BN, and without BN only when the branches "
    "start at zero. Each verdict says whether its nets were at initialisation, partly trained or trained to "
    "convergence: whether blocks are close to the identity is a question about trained nets.",
    "paths": "Veit, Wilber and Belongie 2016, Fig. 6: unrolled, a net of n blocks is 2^n paths, C(n, k) of them "
    "through k residual branches. Left, how many paths of each length; middle, the gradient that one path of each "
    "length carries back to the stem (log scale); right, the total gradient of each length (the shaded range holds "
    "90% of it). If a ResNet behaves like an ensemble of shallow nets, the gradient comes from paths far shorter "
    "than the net.",
    "landscape": "Li et al. 2018, Fig. 5: loss around the trained weights along two random, filter-normalised "
    "directions: a 1D slice, the contours and the surface. Look for a smooth, bowl-shaped surface with shortcuts "
    "and a rougher, non-convex one without.",
}


def sentence(text: str) -> str:
    """A verdict's why, which follows the claim as a sentence of its own: its first letter up."""
    return text[:1].upper() + text[1:]


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def section(title: str, about: str, png: bytes | None, body: str = "") -> str:
    image = f'<img src="{data_uri(png)}" alt="{html.escape(title)}">' if png else ""
    return f"<section><h2>{html.escape(title)}</h2><p class=about>{about}</p>{image}{body}</section>"


def verdict_item(verdict: dict | str) -> str:
    """One verdict: the claim, its outcome as a coloured label, why (the numbers, the criterion) and
    what it was judged on. A verdict that holds by construction gets a grey label saying so, and
    the reason, in place of a colour that would give it the weight of one that could have failed."""
    if isinstance(verdict, str):  # an analysis written by resexp 0.2
        return f"<li>{html.escape(verdict)}</li>"
    outcome, construction = verdict["outcome"], verdict.get("construction") or ""
    label = f"{outcome}, by construction" if construction else outcome
    kind = "by-construction" if construction else outcome.replace(" ", "-")
    item = (
        f"<li{' class=construction' if construction else ''}><span class='outcome {kind}'>{html.escape(label)}</span> "
        f"<b>{html.escape(verdict['claim'])}</b> ({html.escape(verdict['source'])}). "
        f"{html.escape(sentence(verdict['why']))}"
    )
    if construction:
        item += f"<div class=meta>Could not have been otherwise: {html.escape(construction)}.</div>"
    if verdict.get("judged_on"):
        item += f"<div class=meta>Judged on: {html.escape(verdict['judged_on'])}.</div>"
    return item + "</li>"


def analyses(folder: Path, warn: Callable[[str], None]) -> list[str]:
    """A section per analysis result under FOLDER/analysis; a result file that cannot be read is
    named in a warning and left out."""
    out = []
    for found in stored(folder):
        try:
            doc = json.loads(found.numbers.read_text())
            nets = sorted({f"{r['net']} s{r['seed']} ({r['state']})" for r in doc["records"]})
            body = "<ul>" + "".join(verdict_item(v) for v in doc["verdicts"]) + "</ul>"
            body += f"<p class=meta>{len(nets)} nets: {html.escape(', '.join(nets))}; {doc.get('seconds', '?')} s "
            body += f"on {html.escape(str(doc.get('device', '?')))}.</p>"
            png = found.figure.read_bytes()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            warn(f"warning: leaving out {found.numbers}: it is not an analysis result ({type(e).__name__})")
            continue
        out.append(section(found.title, ABOUT[found.kind], png, body))
    return out


def render(runs: list[Run], folder: Path, warn: Callable[[str], None] = lambda text: None) -> str:
    from resexp.commands.plot import figure

    rows = summarise(runs, warn)
    columns, body = table(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    grid = f"<table><tr>{head}</tr>{cells}</table>"
    found = "<ul>" + "".join(f"<li><b>{html.escape(v)}</b></li>" for v in verdicts(rows)) + "</ul>"
    unfinished = [f"{r.path}: {r.state}" for r in runs if not r.complete and not r.imported]
    if unfinished:
        found += "<p>Runs not complete:</p><ul>" + "".join(f"<li>{html.escape(u)}</li>" for u in unfinished) + "</ul>"
    trained = [r for r in runs if r.rows]  # imported runs have no curves
    parts = [
        section(f"curves ({data})", ABOUT["curves"], figure_png(figure([r for r in trained if r.data == data], data)))
        for data in sorted({r.data for r in trained})
    ]
    parts.append(
        f"<section><h2>table and verdict</h2>{grid}<p class=meta>Errors in %, mean ± std over seeds; "
        f"training error = running error of the last evaluation interval.</p>{found}</section>"
    )
    parts += analyses(folder, warn)
    if len(parts) == 1 + len({r.data for r in trained}):
        parts.append(
            "<p class=meta>No analyses yet: <code>resexp analyze responses|gradients|lesion|landscape "
            f"{html.escape(str(folder))}</code> adds them here.</p>"
        )
    return PAGE.format(
        title=html.escape(f"resexp: {folder}"), made=time.strftime("%Y-%m-%d %H:%M"), body="\n".join(parts)
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }}
img {{ max-width: 100%; display: block; margin: .5em 0; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 3px 6px; }}
th {{ background: #f3f3f3; }} .about {{ color: #444; }} .meta {{ color: #777; font-size: 13px; }}
.outcome {{ padding: 1px 6px; border-radius: 3px; font-size: 12px; font-weight: bold; white-space: nowrap; }}
.agrees {{ background: #d4edda; color: #155724; }} .does-not-agree {{ background: #f8d7da; color: #721c24; }}
.cannot-decide {{ background: #fff3cd; color: #856404; }}
.outcome.by-construction {{ background: #e2e3e5; color: #383d41; }} li.construction {{ color: #555; }}
</style></head><body>
<h1>{title}</h1>
<p class=meta>Made by resexp on {made}. He et al. 2015, "Deep Residual Learning for Image Recognition".</p>
{body}
</body></html>
"""


def write(folder: Path, warn: Callable[[str], None]) -> Path:
    """`resexp report FOLDER --format html`: FOLDER/report.html, one self-contained page."""
    path = folder / "report.html"
    atomic_write(path, render(readable_runs(folder, warn), folder, warn))
    return path
