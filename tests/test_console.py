"""Progress on a console: tqdm bars from Python, status lines from the CLI."""

from __future__ import annotations

import io

from napari_mtmsd._console import ProgressPrinter, TqdmBars, run_with_bar


def _job():
    for i in range(3):
        yield {"stage": "features", "step": i + 1, "total": 3}
    for i in range(2):
        yield {"stage": "train", "step": i + 1, "total": 2, "loss": 0.5 / (i + 1)}
    return "done"


def test_a_bar_per_stage(capsys):
    assert run_with_bar(_job(), "Job") == "done"
    err = capsys.readouterr().err
    assert "Job: features" in err and "Job: train" in err and "loss=0.2500" in err
    assert run_with_bar(_job(), "Job", progress=False) == "done"
    assert capsys.readouterr().err == ""


def test_bars_follow_the_records(capsys):
    bars = TqdmBars("x")
    bars({"stage": "a", "step": 2, "total": 4})
    assert bars.bar.n == 2 and bars.bar.total == 4
    bars({"stage": "a", "step": 4, "total": 8})  # a total that grows
    assert bars.bar.n == 4 and bars.bar.total == 8
    bars.close()
    assert bars.bar is None


def test_printer_lines_for_a_log():
    out = io.StringIO()
    printer = ProgressPrinter(out, every_s=0.0)
    for record in [*_job_records()]:
        printer(record)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[pretrain] fitting PCA"
    assert lines[-1].startswith("[pretrain] 2/2  loss 0.2500")


def _job_records():
    yield {"stage": "pretrain", "step": 0, "total": 2, "message": "fitting PCA"}
    yield {"stage": "pretrain", "step": 1, "total": 2, "loss": 0.5}
    yield {"stage": "pretrain", "step": 2, "total": 2, "loss": 0.25}
