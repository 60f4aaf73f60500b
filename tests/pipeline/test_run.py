"""`nbp run` on small one-stage projects: real kernels via papermill, real files."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from projects import add_stage, sh


def test_run_injects_params_and_writes_clean_reports(mini_project: Path) -> None:
    add_stage(mini_project, "adds", "records_metric.ipynb", {"a": 2, "b": 0.5, "label": "sum"})
    proc = sh("nbp", "run", "adds", "--log-output", cwd=mini_project)
    assert "stage 'adds' done" in proc.stdout
    assert "sum 2.5\n" in proc.stdout  # --log-output: the cell's print, as it ran
    assert "without encryption" not in proc.stderr + proc.stdout
    progress = [ln for ln in proc.stderr.splitlines()
                if ln.startswith("nbp run adds: cell ") and " done in " in ln]
    assert [ln.split(" done in ")[0] for ln in progress] == [
        f"nbp run adds: cell {n}/4" for n in range(1, 5)]
    assert progress[2].endswith(" s: parameters injected by nbp run")
    assert json.loads((mini_project / "metrics" / "adds.json").read_text()) == {"sum": 2.5}
    nb = nbformat.read(mini_project / "reports" / "adds.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "a = 2" in injected[0].source
    assert all(c.get("execution_count") is None for c in nb.cells)
    assert all("execution" not in c.metadata for c in nb.cells)
    assert "start_time" not in nb.metadata["papermill"]
    assert nb.metadata["papermill"]["output_path"] == "reports/adds.ipynb"
    html = (mini_project / "reports" / "adds.html").read_text()
    assert "<html" in html and "sum 2.5" in html
    assert not list((mini_project / "reports").glob(".*"))


def test_reports_are_identical_across_runs(mini_project: Path) -> None:
    add_stage(mini_project, "adds", "records_metric.ipynb", {"a": 1, "b": 1.0, "label": "sum"})
    sh("nbp", "run", "adds", cwd=mini_project)
    first = (mini_project / "reports" / "adds.ipynb").read_bytes()
    sh("python", "-m", "nbpipeline", "run", "adds", cwd=mini_project)
    assert (mini_project / "reports" / "adds.ipynb").read_bytes() == first


def test_failing_cell_names_notebook_cell_exception_and_partial_notebook(
    mini_project: Path,
) -> None:
    add_stage(mini_project, "fails", "failing_cell.ipynb", {"divisor": 0})
    proc = sh("nbp", "run", "fails", cwd=mini_project, check=False)
    assert proc.returncode == 1
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("nbp run fails: ")]
    assert " failed after " in progress[-1]
    lines = proc.stderr.strip().splitlines()[len(progress):]
    assert lines[0] == (
        # issue 16, defect 8: the cell as JupyterLab shows it (papermill's injected cell
        # not counted), with the In [n] of the report and its first line
        "nbp: error: stage 'fails' failed: notebooks/fails.ipynb cell 4 (In [5], first line: "
        "result = 10 / divisor) raised ZeroDivisionError: division by zero"
    )
    assert "reports/fails.failed.ipynb" in lines[1]
    assert "Traceback" not in proc.stderr
    partial = nbformat.read(mini_project / "reports" / "fails.failed.ipynb", as_version=4)
    errors = [o for c in partial.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors and errors[0].ename == "ZeroDivisionError"
    sources = [c.source for c in partial.cells]
    assert any("before the failure" in s for s in sources)
    page = (mini_project / "reports" / "fails.failed.html").read_text()
    assert "<title>fails (failed)</title>" in page  # code shown: the toggle starts checked
    assert '<input type="checkbox" id="nbp-show-code" checked>' in page
    assert not (mini_project / "reports" / "fails.ipynb").exists()
    assert not (mini_project / "reports" / "fails.html").exists()


def test_bad_params_are_reported_before_any_kernel_starts(mini_project: Path) -> None:
    add_stage(mini_project, "adds", "records_metric.ipynb", {"a": "two", "b": 1.0, "label": "s"})
    proc = sh("nbp", "run", "adds", cwd=mini_project, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "nbp: error: params.yaml [adds]: parameter 'a' is str 'two' but the notebook's default "
        "is int 1; set it to an int in params.yaml (or change the default in the parameters cell)"
    )
    assert not (mini_project / "reports").exists()


def test_unknown_and_missing_params(mini_project: Path) -> None:
    params = {"a": 1, "b": 1.0, "label": "s", "c": 3}
    add_stage(mini_project, "adds", "records_metric.ipynb", params)
    proc = sh("nbp", "run", "adds", cwd=mini_project, check=False)
    assert "unknown parameter(s) c" in proc.stderr and proc.returncode == 2
    add_stage(mini_project, "adds", "records_metric.ipynb", {"a": 1})
    proc = sh("nbp", "run", "adds", cwd=mini_project, check=False)
    assert "missing parameter(s) b, label" in proc.stderr and proc.returncode == 2


def test_malformed_params_yaml(mini_project: Path) -> None:
    add_stage(mini_project, "adds", "records_metric.ipynb", {"a": 1, "b": 1.0, "label": "sum"})
    (mini_project / "params.yaml").write_text("adds:\n  a: 1\n   b: 2\n")
    proc = sh("nbp", "run", "adds", cwd=mini_project, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("nbp: error: params.yaml:3:")


def test_unknown_stage_and_outside_project(mini_project: Path, tmp_path: Path) -> None:
    add_stage(mini_project, "adds", "records_metric.ipynb", {"a": 1, "b": 1.0, "label": "s"})
    proc = sh("nbp", "run", "nope", cwd=mini_project, check=False)
    assert "stage 'nope': no notebook at notebooks/nope.ipynb" in proc.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc = sh("nbp", "run", "adds", cwd=outside, check=False)
    assert "no dvc.yaml found" in proc.stderr and proc.returncode == 1


def test_unknown_kernel_lists_installed_kernels(mini_project: Path) -> None:
    add_stage(mini_project, "adds", "records_metric.ipynb", {"a": 1, "b": 1.0, "label": "sum"})
    path = mini_project / "notebooks" / "adds.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = {"name": "julia-1.9", "display_name": "Julia", "language": "julia"}
    nbformat.write(nb, path)
    proc = sh("nbp", "run", "adds", cwd=mini_project, check=False)
    assert "kernel 'julia-1.9' is not installed (installed kernels: " in proc.stderr
    assert "python3" in proc.stderr and "Traceback" not in proc.stderr


def test_html_page_is_rendered_outside_nbp_runs_process(
    mini_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nbconvert's import and first render (~0.6 s of CPU) were `nbp run`'s critical path
    after the last cell: they happen in the renderer's process, which is gone afterwards."""
    import sys

    import psutil

    from nbpipeline.pipeline import run
    from nbpipeline.project import Project

    for name in [m for m in sys.modules if m.split(".")[0] == "nbconvert"]:
        monkeypatch.delitem(sys.modules, name)
    add_stage(mini_project, "adds", "records_metric.ipynb", {"a": 1, "b": 1.0, "label": "s"})
    monkeypatch.chdir(mini_project)
    result = run.run_stage(Project(mini_project), "adds", trace=False)
    assert "nbconvert" not in sys.modules
    assert "<title>adds</title>" in result.html.read_text()
    assert not [c for c in psutil.Process().children(recursive=True) if c.is_running()
                and c.status() != psutil.STATUS_ZOMBIE]


def test_kernel_boots_while_papermill_imports_and_is_gone_after_success_and_failure(
    mini_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel starts before papermill is imported (the two overlap: ~0.8 s a stage),
    so nbclient does not own it: nbp must shut it down itself, on success and failure."""
    import sys

    import psutil

    from nbpipeline.errors import StageFailedError
    from nbpipeline.pipeline import run
    from nbpipeline.project import Project

    seen: list[object] = []
    original = run.Kernel.__init__

    def init(self: run.Kernel, name: str, cwd: Path, run_dir: run.RunDir, env: dict) -> None:
        seen.append("papermill" in sys.modules)
        original(self, name, cwd, run_dir, env)
        seen.append(run_dir.path)

    monkeypatch.setattr(run.Kernel, "__init__", init)
    for name in [m for m in sys.modules if m.split(".")[0] == "papermill"]:
        monkeypatch.delitem(sys.modules, name)
    add_stage(mini_project, "adds", "records_metric.ipynb", {"a": 1, "b": 1.0, "label": "s"})
    add_stage(mini_project, "fails", "failing_cell.ipynb", {"divisor": 0})
    monkeypatch.chdir(mini_project)
    run.run_stage(Project(mini_project), "adds", trace=False)
    with pytest.raises(StageFailedError):
        run.run_stage(Project(mini_project), "fails", trace=False)
    assert seen[0] is False  # papermill not imported yet when the kernel was started
    assert [Path(str(d)).exists() for d in seen[1::2]] == [False, False]  # sockets removed
    kernels = [p for p in psutil.Process().children(recursive=True)
               if "ipykernel" in " ".join(p.cmdline())]
    assert kernels == []


def test_a_cell_is_described_as_jupyterlab_shows_it() -> None:
    from nbpipeline.pipeline.run import describe_cell

    assert describe_cell(4, 5, "\n# why\nx = 1 / 0\n") == "cell 4 (In [5], first line: # why)"
    assert describe_cell(2, None, "") == "cell 2 (In [ ], first line: )"
    long = describe_cell(1, 1, "y = " + "a" * 100)
    assert long.endswith("...)") and len(long) < 100
