"""Progress lines of a running stage (nbpipeline.pipeline.progress), in process: no kernel.

Under `nbp run` and `dvc repro`: tests/pipeline/test_run.py and test_trace.py."""

from __future__ import annotations

import io
import time

import nbformat
import pytest

from nbpipeline.notebook import INJECTED_TAG
from nbpipeline.pipeline.progress import Progress, cell_label


def _notebook() -> nbformat.NotebookNode:
    v4 = nbformat.v4
    injected = v4.new_code_cell("x = 2", metadata={"tags": [INJECTED_TAG]})
    return v4.new_notebook(cells=[
        v4.new_markdown_cell("Some prose without a heading."),
        v4.new_code_cell("\n\nimport time  # first non-blank line\nx = 1"),
        injected,
        v4.new_markdown_cell("## Hyperparameter search\nwith folds in time order"),
        v4.new_code_cell("search.fit(X, y)"),
        v4.new_code_cell("y = " + "1 + " * 40 + "1"),
        v4.new_code_cell(""),
    ])


def test_cells_are_named_by_the_heading_above_or_their_first_line() -> None:
    nb = _notebook()
    assert cell_label(nb, 1) == "import time  # first non-blank line"
    assert cell_label(nb, 2) == "parameters injected by nbp run"
    assert cell_label(nb, 4) == "Hyperparameter search"
    long = cell_label(nb, 5)
    assert long.startswith("y = 1 + 1") and long.endswith("...") and len(long) == 70
    assert cell_label(nb, 6) == "(empty cell)"


def test_a_line_per_finished_cell_and_while_a_long_cell_runs() -> None:
    out = io.StringIO()
    progress = Progress("train", out, tick=0.05)
    nb = _notebook()
    progress.start(nb)
    progress.cell_started(1)
    progress.cell_finished(1)
    progress.cell_started(4)
    time.sleep(0.5)  # ten ticks
    progress.cell_finished(4)
    progress.cell_started(5)
    progress.cell_finished(5, failed=True)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("nbp run train: cell 1/5 done in ")
    assert lines[0].endswith(" s: import time  # first non-blank line")
    running = [ln for ln in lines if " running for " in ln]
    assert running and all(ln.startswith("nbp run train: cell 3/5 running for ") for ln in running)
    assert all(ln.endswith(" s: Hyperparameter search") for ln in running)
    assert lines[-2].startswith("nbp run train: cell 3/5 done in ")
    assert lines[-1].startswith("nbp run train: cell 4/5 failed after ")
    assert set(progress.cell_seconds) == {1, 4, 5}


@pytest.mark.parametrize("stream", [None, io.StringIO()])
def test_no_ticker_without_cells_and_silent_without_a_stream(stream: io.StringIO | None) -> None:
    progress = Progress("data", stream, tick=0.01)
    progress.start(_notebook())
    progress.cell_started(1)
    progress.cell_finished(1)
    progress.close()
    progress.close()
    assert 1 in progress.cell_seconds
    if stream is not None:
        assert stream.getvalue().count("\n") == 1
