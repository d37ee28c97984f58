"""`resexp models`: the standard variants of the paper (resexp.nets.costs.variant_rows) as a table."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def table(rows: list[dict[str, Any]]) -> Table:
    """One row per variant: family, depth, mode, shortcut, parameters, multiply-adds per image."""
    shown = Table(title="He et al. 2015 variants (CIFAR: 10 classes, 32x32; ImageNet: 1000 classes, 224x224)")
    for column in ("family", "depth", "mode", "shortcut", "params", "multiply-adds"):
        shown.add_column(column, justify="right" if column in ("depth", "params", "multiply-adds") else "left")
    for r in rows:
        macs = f"{r['macs'] / 1e6:.1f}M" if r["macs"] < 1e9 else f"{r['macs'] / 1e9:.2f}G"
        shown.add_row(r["family"], str(r["depth"]), r["mode"], r["shortcut"], f"{r['params'] / 1e6:.3f}M", macs)
    return shown
