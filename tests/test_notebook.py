"""The notebook (notebooks/resexp.py, jupytext's percent format, and the .ipynb made from it):
the two say the same, and every cell runs end to end, at a tiny size on the CPU (in a real
kernel: what a notebook user runs)."""

import os

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

SOURCE, NOTEBOOK = REPO / "notebooks" / "resexp.py", REPO / "notebooks" / "resexp.ipynb"


def cells(notebook) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in notebook.cells]


def test_the_ipynb_is_the_percent_source_converted():
    """`make notebook` writes the .ipynb from the .py; an edit to one alone fails here."""
    assert cells(nbformat.read(NOTEBOOK, as_version=4)) == cells(jupytext.read(SOURCE))


def test_every_cell_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("RESEXP_NOTEBOOK_SMOKE", "1")  # tiny nets on synthetic images, on the CPU
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the paper's figure, and the signal analysis's
    assert (tmp_path / "runs/cifar_quick/analysis/signal.json").exists()
    printed = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "AGREES" in printed or "CANNOT DECIDE" in printed or "DOES NOT AGREE" in printed


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
