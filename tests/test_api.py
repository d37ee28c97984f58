"""resexp.api: the commands as Python functions, with the CLI's checks and its one-line errors as
exceptions (never sys.exit), driven in-process as a notebook drives them."""

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import TINY, folder, leftovers, signal_at
from resexp import api
from resexp.errors import ConfigError, OptionError, UserError


@pytest.fixture
def here(tmp_path):
    before = Path.cwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(before)


def test_train_report_plot_and_analyze_as_functions(here):
    folders = api.train(*TINY, "model.mode=plain,residual", multirun=True)
    assert sorted(map(str, folders)) == sorted(
        [folder(*TINY, "model.mode=plain"), folder(*TINY, "model.mode=residual")]
    )
    assert all((here / f / "last.pt").exists() for f in folders)
    assert [r.label for r in api.runs("runs/default")] == ["plain-8", "ResNet-8"]
    table = json.loads(api.report("runs/default", "json"))
    assert [row["net"] for row in table["rows"]] == ["plain-8", "ResNet-8"]
    assert api.plot("runs/default") == [Path("runs/default/curves.png"), Path("runs/default/curves.svg")]
    assert api.html("runs/default").read_text().startswith("<!doctype html>")
    result = api.analyze("signal", "runs/default", images=8)
    assert result.kind == "signal" and result.verdicts and all(f.exists() for f in result.files)
    assert {r["net"] for r in result.records} == {"plain-8", "ResNet-8"}
    at_init = api.analyze("gradients", ["data=synthetic", "model.depth=8"], at_init=True, device="cpu")
    assert at_init.records[0]["training"]["kind"] == "initialised"
    assert api.train(*TINY, "model.mode=plain,residual", multirun=True) == folders  # complete: skipped


def test_mistakes_are_the_clis_one_line_as_exceptions(here):
    with pytest.raises(ConfigError, match="model.depth=21 is not a CIFAR depth"):
        api.train(*TINY, "model.depth=21")
    with pytest.raises(OptionError, match="--draws 0 must be at least 1"):
        api.analyze("lesion", ".", draws=0)
    with pytest.raises(UserError, match="'ensembles' is not an analysis"):
        api.analyze("ensembles", ".")
    with pytest.raises(UserError, match="colour: not an option of api.analyze"):
        api.analyze("signal", ".", colour=3)
    with pytest.raises(UserError, match="a config has no trained weights: pass at_init=True"):
        api.analyze("signal", ["data=synthetic"])
    with pytest.raises(UserError, match="no runs"):
        api.runs(".")
    with pytest.raises(UserError, match="form='pdf' is not a text format"):
        api.report(".", "pdf")
    assert leftovers(here) == []


def test_a_run_that_does_not_finish_is_an_exception_and_an_interrupt_resumes(here, monkeypatch):
    with pytest.raises(api.RunsFailed, match="1 run\\(s\\) did not finish"):
        api.train(*TINY, "optim.lr=1e6")  # diverges
    signal_at(monkeypatch, 10, signal.SIGINT)  # the notebook's stop button
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        api.train(*TINY)
    monkeypatch.undo()
    [run] = api.train(*TINY)
    rows = [json.loads(line) for line in (here / run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [8, 16]
