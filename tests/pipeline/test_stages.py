"""`nbp stage add`, dvc.yaml reading, interactive parity (`nbp.parameters`, `under_pipeline`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from projects import FIXTURES, NOTEBOOKS, REPO, project_env, sh

from nbpipeline.errors import NotebookError, StageError
from nbpipeline.pipeline.authoring import add_stage
from nbpipeline.pipeline.check import check_project, sync_notebooks
from nbpipeline.pipeline.stages import DvcYaml, nbp_stage_name
from nbpipeline.project import Project

FOREIGN = FIXTURES / "foreign-notebooks"
DVC_EXAMPLES = FIXTURES / "dvc-examples"


def example(root: Path) -> Project:
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    return Project(root)


def snapshot(project: Project, *names: str) -> dict[str, bytes]:
    return {n: (project.root / n).read_bytes() for n in names if (project.root / n).exists()}


def test_exploratory_notebook_becomes_a_stage_and_a_second_run_changes_nothing(
    tmp_path: Path,
) -> None:
    project = example(tmp_path)
    shutil.copy(FOREIGN / "iterative-churn__TrainChurnModel.ipynb", project.notebook("churn"))
    dvc_before = project.dvc_yaml.read_text()
    params_before = project.params_yaml.read_bytes()

    result = add_stage(project, project.notebook("churn"), deps=["data/train.parquet"],
                       outs=["models/churn"])
    assert result.changes == [
        'notebooks/churn.ipynb: added `nbp.init("churn")` (interactive runs see the project '
        "root)",
        "notebooks/churn.ipynb: added an empty `parameters` cell as cell 3 (no literal "
        "assignments at the top); move tunable values into it as `name = literal` lines",
        "notebooks/churn.ipynb: cleared the outputs of 11 cells (executed copies go to "
        "reports/churn.ipynb)",
        "dvc.yaml: stage 'churn' added (notebooks/churn.ipynb, ${paths.train_path}, "
        "models/churn, reports/churn.ipynb, reports/churn.html)",
    ]
    dvc_after = project.dvc_yaml.read_text()
    assert dvc_after.startswith(dvc_before)  # nothing else rewritten, comments kept
    assert dvc_after[len(dvc_before):] == (
        "\n  churn:\n    cmd: nbp run churn\n    deps:\n      - notebooks/churn.ipynb\n"
        "      - ${paths.train_path}\n    outs:\n      - models/churn\n"
        "      - reports/churn.ipynb\n      - reports/churn.html\n"
    )
    assert project.params_yaml.read_bytes() == params_before
    nb = nbformat.read(project.notebook("churn"), as_version=4)
    assert nb.cells[0].source.startswith("import nbpipeline as nbp")
    assert "parameters" in nb.cells[2].metadata["tags"]
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")

    files = snapshot(project, "dvc.yaml", "params.yaml", "notebooks/churn.ipynb")
    again = add_stage(project, project.notebook("churn"), deps=["data/train.parquet"],
                      outs=["models/churn"])
    assert again.changes == []
    assert snapshot(project, "dvc.yaml", "params.yaml", "notebooks/churn.ipynb") == files
    assert check_project(project) == []


def _explore_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Exploring"),
        nbformat.v4.new_code_cell("import pandas as pd\n%matplotlib inline"),
        nbformat.v4.new_code_cell(
            "# knobs\nalpha = 0.5\nn_rows: int = 100  # rows to keep\nnames = ['a', 'b']\n"
            "seed = 1\ntrain_path = 'data/train.parquet'\ndf = pd.read_parquet(train_path)"),
        nbformat.v4.new_code_cell(
            "import nbpipeline as nbp\nnbp.record.metric('rows', len(df))\n"
            "nbp.record.plot('hist', df.head())"),
    ]
    nbformat.write(nb, path)


def test_literal_assignments_at_the_top_become_the_parameters_cell(tmp_path: Path) -> None:
    project = example(tmp_path)
    _explore_notebook(project.notebook("explore"))
    params_before = project.params_yaml.read_text()

    result = add_stage(project, project.notebook("explore"), deps=["data/train.parquet"])
    assert result.changes[1] == (
        "notebooks/explore.ipynb: split the literal assignments (alpha, n_rows, names, seed, "
        "train_path) off cell 4 into a `parameters` cell")
    nb = nbformat.read(project.notebook("explore"), as_version=4)
    sources = [c.source for c in nb.cells]
    assert sources[3] == ("# knobs\nalpha = 0.5\nn_rows: int = 100  # rows to keep\n"
                          "names = ['a', 'b']\nseed = 1\ntrain_path = 'data/train.parquet'")
    assert nb.cells[3].metadata["tags"] == ["parameters"]
    assert sources[4] == "df = pd.read_parquet(train_path)"
    # defaults moved under the stage's section; seed and train_path come from common/paths
    assert project.params_yaml.read_text() == params_before + (
        "\nexplore:\n  alpha: 0.5\n  n_rows: 100\n  names:\n  - a\n  - b\n")
    stage = DvcYaml(project).notebook_stages()["explore"]
    assert stage.deps == ("notebooks/explore.ipynb", "data/train.parquet")
    assert "${paths.train_path}" in stage.written
    assert [r.key for r in stage.params] == ["explore", "common.seed"]
    assert stage.outs == ("reports/explore.ipynb", "reports/explore.html",
                          "metrics/explore.json", "plots/explore/hist.csv")
    assert [str(p) for p in check_project(project)] == [
        "notebooks/explore.ipynb: default seed = 1 but params.yaml [common] has 42; run "
        "`nbp sync` to rewrite the parameters cell (interactive runs would differ from "
        "`dvc repro`)"]


def _fixture_project(root: Path, fixture: Path) -> Project:
    root.mkdir()
    if fixture.is_dir():
        for name in ("dvc.yaml", "params.yaml"):
            if (fixture / name).exists():
                shutil.copy(fixture / name, root / name)
    else:
        shutil.copy(fixture, root / "dvc.yaml")
    (root / "notebooks").mkdir()
    shutil.copy(FOREIGN / "papermill__simple_execute.ipynb", root / "notebooks" / "nbstage.ipynb")
    return Project(root)


REAL_WORLD = [
    *(DVC_EXAMPLES / n for n in ("demo-bank-customer-churn", "example-get-started-experiments",
                                  "example-pokemon-classifier")),
    *sorted((DVC_EXAMPLES / "dvcyaml-schema" / "valid").glob("*.yaml")),
]


@pytest.mark.parametrize("fixture", REAL_WORLD, ids=lambda p: p.name)
def test_stage_add_leaves_real_world_dvc_yaml_untouched_but_for_its_stage(
    tmp_path: Path, fixture: Path,
) -> None:
    project = _fixture_project(tmp_path / "p", fixture)
    before = project.dvc_yaml.read_text()
    other_stages = dict(DvcYaml(project).raw_stages)
    add_stage(project, project.notebook("nbstage"))
    after = project.dvc_yaml.read_text()
    assert after.startswith(before if before.endswith("\n") else before + "\n")
    dvc = DvcYaml(project)
    assert nbp_stage_name(dvc.raw_stages["nbstage"]["cmd"]) == ("nbstage", ())
    assert {k: v for k, v in dvc.raw_stages.items() if k != "nbstage"} == other_stages
    assert check_project(project) == []
    files = snapshot(project, "dvc.yaml", "params.yaml", "notebooks/nbstage.ipynb")
    assert add_stage(project, project.notebook("nbstage")).changes == []
    assert snapshot(project, "dvc.yaml", "params.yaml", "notebooks/nbstage.ipynb") == files


def test_old_nbformat_is_upgraded_by_stage_add(tmp_path: Path) -> None:
    project = example(tmp_path)
    shutil.copy(FOREIGN / "nbformat__test3_v3.ipynb", project.notebook("old"))
    result = add_stage(project, project.notebook("old"))
    assert result.changes[0] == "notebooks/old.ipynb: upgraded from nbformat v3 to v4"
    assert json.loads(project.notebook("old").read_text())["nbformat"] == 4


@pytest.mark.parametrize(("notebook", "setup", "error", "message"), [
    ("elsewhere.ipynb",
     lambda p: shutil.copy(NOTEBOOKS / "records_metric.ipynb", p.root / "elsewhere.ipynb"),
     StageError, "elsewhere.ipynb: `nbp run elsewhere` runs notebooks/elsewhere.ipynb; move "
     "the notebook there (git mv elsewhere.ipynb notebooks/elsewhere.ipynb) and run again"),
    ("notebooks/rstats.ipynb",
     lambda p: shutil.copy(FOREIGN / "jupytext__ir_notebook_R.ipynb", p.notebook("rstats")),
     NotebookError, "notebooks/rstats.ipynb: a r notebook cannot be an nbpipeline stage"),
    ("notebooks/data.ipynb",
     lambda p: p.dvc_yaml.write_text(p.dvc_yaml.read_text().replace(
         "cmd: nbp run data", "cmd: python prepare.py")),
     StageError, "dvc.yaml: stage 'data' already exists and is not `nbp run data`; rename the "
     "notebook or the existing stage"),
    ("notebooks/my stage.ipynb",
     lambda p: shutil.copy(NOTEBOOKS / "records_metric.ipynb", p.notebooks / "my stage.ipynb"),
     StageError, "notebooks/my stage.ipynb: a stage notebook is notebooks/<name>.ipynb with a "
     "name of letters, digits, _ and -; rename the file"),
])
def test_stage_add_errors(tmp_path: Path, notebook: str, setup, error, message) -> None:  # noqa: ANN001
    project = example(tmp_path)
    setup(project)
    with pytest.raises(error) as info:
        add_stage(project, project.root / notebook)
    assert str(info.value).startswith(message)


def _executed_interactively(project: Project, stage: str) -> dict:
    """Run the notebook as JupyterLab would: kernel cwd = notebooks/, no pipeline env."""
    nb = nbformat.read(project.notebook(stage), as_version=4)
    env = {k: v for k, v in project_env().items() if not k.startswith("NBPIPELINE_")}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(project.notebooks)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return json.loads((project.metrics / f"{stage}.json").read_text())


def test_interactive_run_sees_what_nbp_run_injects(mini_project: Path) -> None:
    project = Project(mini_project)
    project.dvc_yaml.write_text("stages: {}\n")
    shutil.copy(NOTEBOOKS / "reports_parity.ipynb", project.notebook("parity"))
    add_stage(project, project.notebook("parity"))
    text = project.params_yaml.read_text().replace("alpha: 1", "alpha: 2")
    project.params_yaml.write_text(text)
    expected = {"alpha": 2, "label": "x", "seed": 0}

    sh("nbp", "run", "parity", cwd=project.root)
    piped = json.loads((project.metrics / "parity.json").read_text())
    assert piped == {"under_pipeline": True, "params": expected, "seen": expected,
                     "cwd_is_root": True}

    seen = _executed_interactively(project, "parity")
    assert seen["under_pipeline"] is False and seen["cwd_is_root"] is True
    assert seen["params"] == expected  # nbp.parameters() == what nbp run injects
    assert seen["seen"]["alpha"] == 1  # the stale default: nbp check catches it ...
    assert [p.message.split(";")[0] for p in check_project(project)] == [
        "default alpha = 1 but params.yaml [parity] has 2"]
    sync_notebooks(project)  # ... and nbp sync fixes it
    assert _executed_interactively(project, "parity")["seen"] == expected


def test_existing_stage_gets_only_its_missing_entries(tmp_path: Path) -> None:
    project = example(tmp_path)
    before = project.dvc_yaml.read_text()
    project.dvc_yaml.write_text(before.replace("      - reports/evaluate.html\n", ""))
    result = add_stage(project, project.notebook("evaluate"))
    assert result.changes == ["dvc.yaml: stage 'evaluate' now also has reports/evaluate.html"]
    assert project.dvc_yaml.read_text() == before  # plots options, comments: byte for byte


def test_malformed_dvc_yaml_is_one_clear_error(tmp_path: Path) -> None:
    project = example(tmp_path)
    project.dvc_yaml.write_text("stages:\n  data:\n    cmd: nbp run data\n   deps: [x]\n")
    with pytest.raises(StageError, match=r"^dvc.yaml:4:\d+: malformed YAML \(.*\); fix the syntax"):
        check_project(project)
    project.dvc_yaml.write_text("stages:\n  - data\n")
    with pytest.raises(StageError, match="`stages:` must be a mapping of stage name to stage"):
        add_stage(project, project.notebook("data"))


def test_params_needs_a_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import nbpipeline as nbp

    monkeypatch.delenv("NBPIPELINE_STAGE", raising=False)
    example(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(nbp.NbpipelineError, match=r"call nbp.init\('<stage>'\) first"):
        nbp.parameters()
    assert nbp.parameters("evaluate")["decision_threshold"] == 0.35


@pytest.mark.parametrize(("params_yaml", "message"), [
    ("data:\n  seed: 1\n   bad: 2\n", r"^params.yaml:3:\d+: malformed YAML \(.*\); fix the syntax"),
    ("common: {seed: 42}\nexplore: [1, 2]\n",
     r"^params.yaml: section 'explore' must be a mapping of name: value$"),
])
def test_stage_add_refuses_a_broken_params_yaml(tmp_path: Path, params_yaml: str,
                                                message: str) -> None:
    from nbpipeline.errors import ParamsError

    project = example(tmp_path)
    _explore_notebook(project.notebook("explore"))
    project.params_yaml.write_text(params_yaml)
    with pytest.raises(ParamsError, match=message):
        add_stage(project, project.notebook("explore"))
    assert "explore" not in project.dvc_yaml.read_text()
    assert "nbp.init" not in project.notebook("explore").read_text()


def test_a_broken_parameters_cell_stops_stage_add_before_any_write(tmp_path: Path) -> None:
    project = example(tmp_path)
    path = shutil.copy(FOREIGN / "papermill__complex_parameters.ipynb", project.notebook("cx"))
    before = snapshot(project, "dvc.yaml", "params.yaml", "notebooks/cx.ipynb")
    with pytest.raises(NotebookError, match=r"notebooks/cx.ipynb cell \d+ \(parameters\) line "
                       r"\d+: syntax error"):
        add_stage(project, path)
    assert snapshot(project, "dvc.yaml", "params.yaml", "notebooks/cx.ipynb") == before


def test_stage_add_writes_values_that_read_back_as_written(tmp_path: Path) -> None:
    # issue 16, defect 7: ruamel (YAML 1.2) wrote `No`, PyYAML (1.1) read it back as False
    # and `nbp check` reported a type error the tool itself had caused
    from dvc.utils.serialize import parse_yaml

    from nbpipeline.params import load_params

    project = example(tmp_path)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(
        "answer = 'No'\nswitch = 'off'\nexponent = '1e3'\nwhen = '2013-09-01'\nyes = ['y', 'n']")]
    nbformat.write(nb, project.notebook("answers"))
    add_stage(project, project.notebook("answers"))
    expected = {"answer": "No", "switch": "off", "exponent": "1e3", "when": "2013-09-01",
                "yes": ["y", "n"]}
    assert load_params(project.params_yaml)["answers"] == expected
    text = project.params_yaml.read_text()
    assert parse_yaml(text, "params.yaml")["answers"] == expected
    assert [p for p in check_project(project) if "answers" in p] == []
