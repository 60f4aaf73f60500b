"""Notebooks nobody here wrote (tests/fixtures/foreign-notebooks): clear errors, never tracebacks.

Each fixture comes from the test suite or examples of papermill, nbclient, nbformat,
jupytext, ploomber or recommenders (see fixtures/foreign-notebooks/MANIFEST.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from projects import FIXTURES, NOTEBOOKS

from nbpipeline import cli
from nbpipeline.errors import NbpipelineError, StageFailedError
from nbpipeline.pipeline.authoring import add_stage
from nbpipeline.pipeline.check import check_project
from nbpipeline.pipeline.run import run_stage
from nbpipeline.project import Project

FOREIGN = FIXTURES / "foreign-notebooks"


@pytest.fixture
def project(mini_project: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    (mini_project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(mini_project)
    return Project(mini_project)


def put(project: Project, fixture: str, stage: str) -> Path:
    return Path(shutil.copy(FOREIGN / fixture, project.notebook(stage)))


@pytest.mark.parametrize(("fixture", "expected"), [
    ("papermill__no_parameters.ipynb", "notebooks/s.ipynb: no cell tagged 'parameters'; tag "
     "the code cell that holds the default values"),
    ("papermill__notimplemented_translator_R.ipynb", "notebooks/s.ipynb: kernel 'r' is not "
     "installed (installed kernels: "),
    ("jupytext__sample_bash_notebook.ipynb", "notebooks/s.ipynb: kernel 'bash' is not installed"),
    ("nbformat__test2_v2.ipynb", "nbp: error: notebooks/s.ipynb: nbformat v2 is too old to "
     "run; upgrade it with `nbp stage add notebooks/s.ipynb` or `jupyter nbconvert --to "
     "notebook --inplace notebooks/s.ipynb`"),
    ("nbformat__test3_v3.ipynb", "notebooks/s.ipynb: nbformat v3 is too old to run"),
    ("nbformat__invalid.ipynb", "nbp: error: notebooks/s.ipynb: invalid notebook at cells/0: "
     "'source' is a required property; fix that field or re-save the notebook from JupyterLab"),
    ("nbformat__v4_5_invalid_metadata.ipynb",
     "notebooks/s.ipynb: invalid notebook at metadata/kernelspec:"),
    ("papermill__complex_parameters.ipynb", "notebooks/s.ipynb cell 1 (parameters) line 14: "
     "syntax error: invalid syntax"),
])
def test_nbp_run_refuses_with_one_clear_line(
    project: Project, capsys: pytest.CaptureFixture[str], fixture: str, expected: str,
) -> None:
    put(project, fixture, "s")
    code = cli.main(["run", "s"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nbp: error: ") and expected in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    if "translator_R" in fixture or "bash" in fixture:
        assert "besides, a " in err and "notebook cannot run as an nbpipeline stage" in err


@pytest.mark.parametrize("fixture", sorted(p.name for p in FOREIGN.glob("*.ipynb")))
def test_stage_add_then_check_never_crash(project: Project, fixture: str) -> None:
    path = put(project, fixture, "s")
    try:
        add_stage(project, path)
    except NbpipelineError as exc:  # refused: the message names the notebook
        assert "s.ipynb" in str(exc)
        return
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert "widgets" not in nb.metadata
    for problem in check_project(project):
        assert problem.file in ("notebooks/s.ipynb", "params.yaml", "dvc.yaml")


def test_huge_outputs_and_widget_state_are_reported_then_cleared(project: Project) -> None:
    path = put(project, "ploomber-projects__micro-pipelines_2-guide.ipynb", "guide")
    project.dvc_yaml.write_text(
        "stages:\n  guide:\n    cmd: nbp run guide\n    deps:\n      - notebooks/guide.ipynb\n"
        "    outs:\n      - reports/guide.ipynb\n      - reports/guide.html\n")
    problems = [str(p) for p in check_project(project)]
    assert any(p.startswith("notebooks/guide.ipynb: source notebook carries outputs (cells ")
               for p in problems), problems
    size = path.stat().st_size
    changes = add_stage(project, path).changes
    assert any("cleared the outputs of" in c for c in changes)
    assert path.stat().st_size < size / 20


def test_foreign_notebooks_run_after_stage_add(project: Project) -> None:
    cases = {
        "expected": "nbclient__Skip_Exceptions_with_Cell_Tags.ipynb",  # raises-exception tag
        "skipped": "nbclient__Skip_Execution_with_Cell_Tag.ipynb",  # skip-execution, no kernel
        "widgets": "nbclient__JupyterWidgets.ipynb",  # widget state
        "unicode": "nbclient__UnicodePy3.ipynb",
    }
    for stage, fixture in cases.items():
        add_stage(project, put(project, fixture, stage))
    for stage in cases:
        run_stage(project, stage)
        assert (project.reports / f"{stage}.html").exists()

    report = nbformat.read(project.reports / "expected.ipynb", as_version=4)
    tagged = next(c for c in report.cells if "raises-exception" in c.metadata.get("tags", []))
    assert [o.ename for o in tagged.outputs if o.output_type == "error"] == ["Exception"]
    assert report.cells[-1].outputs[0].text == "ok\n"  # the cell after it ran
    assert not any("papermill-error-cell-tag" in c.metadata.get("tags", []) for c in report.cells)
    skipped = nbformat.read(project.reports / "skipped.ipynb", as_version=4)
    assert [c.outputs for c in skipped.cells if "skip-execution" in c.metadata.get("tags", [])
            ] == [[]]
    assert skipped.cells[-1].outputs[0].text == "ok\n"


@pytest.mark.parametrize(("fixture", "expected", "hint"), [
    ("nbclient__Disable_Stdin.ipynb", "notebooks/s.ipynb cell 3 (In [3], first line: try:) "
     "raised StdinNotImplementedError",
     "a stage cannot ask for input(); make the value a parameter"),
    ("papermill__sysexit1.ipynb", "notebooks/s.ipynb cell 4 (In [4], first line: sys.exit(1)) "
     "raised SystemExit: 1",
     "sys.exit() with an error code fails the stage"),
])
def test_stdin_and_sys_exit_fail_the_stage_with_a_hint(
    project: Project, fixture: str, expected: str, hint: str,
) -> None:
    add_stage(project, put(project, fixture, "s"))
    with pytest.raises(StageFailedError) as info:
        run_stage(project, "s")
    assert f"stage 's' failed: {expected}" in str(info.value)
    assert f"hint: {hint}" in str(info.value)
    assert (project.reports / "s.failed.ipynb").exists()


def test_non_python_notebook_on_an_installed_kernel_is_refused(
    project: Project, capsys: pytest.CaptureFixture[str],
) -> None:
    path = put(project, "papermill__notimplemented_translator_R.ipynb", "s")
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "R?", "language": "R"}
    nbformat.write(nb, path)
    assert cli.main(["run", "s"]) == 2
    assert capsys.readouterr().err == (
        "nbp: error: notebooks/s.ipynb: a r notebook cannot run as an nbpipeline stage (its "
        "parameters cell is parsed as Python literals); port it to Python, or run it from "
        "dvc.yaml with its own command instead of `nbp run`\n")


def test_uninstalled_kernel_of_a_real_project_after_stage_add(
    project: Project, capsys: pytest.CaptureFixture[str],
) -> None:
    add_stage(project, put(project, "recommenders__sar_movielens.ipynb", "sar"))
    assert cli.main(["run", "sar"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbp: error: notebooks/sar.ipynb: kernel 'recommenders' is not "
                          "installed (installed kernels: ")
    assert "Traceback" not in err


def test_a_real_error_after_an_expected_one_fails_the_stage(project: Project) -> None:
    shutil.copy(NOTEBOOKS / "expected_error_then_real_error.ipynb",
                project.notebook("mixed"))
    add_stage(project, project.notebook("mixed"))
    with pytest.raises(StageFailedError) as info:
        run_stage(project, "mixed")
    assert str(info.value).startswith(
        "stage 'mixed' failed: notebooks/mixed.ipynb cell 6 (In [6], first line: {}[\"missing\"]) "
        "raised KeyError: 'missing'")  # cell 1 is markdown, cell 2 nbp.init(), 3 parameters
    failed = nbformat.read(project.reports / "mixed.failed.ipynb", as_version=4)
    printed = [o.get("text") for c in failed.cells for o in c.get("outputs", [])]
    assert "still running\n" in printed and "never reached\n" not in printed
