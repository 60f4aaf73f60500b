"""`nbp check` and `nbp sync`: one test per problem message, on copies of the example."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from projects import FIXTURES, REPO, sh

from nbpipeline.errors import ParamsError
from nbpipeline.pipeline.check import check_project, sync_notebooks
from nbpipeline.project import Project


def example(root: Path) -> Project:
    """The repo's example (notebooks, dvc.yaml, params.yaml) copied as is, no git needed."""
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    return Project(root)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def edit_notebook(path: Path, change: Callable[[nbformat.NotebookNode], None]) -> None:
    nb = nbformat.read(path, as_version=4)
    change(nb)
    nbformat.write(nb, path)


def params_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))


def test_the_repos_own_example_passes(tmp_path: Path) -> None:
    assert [str(p) for p in check_project(example(tmp_path))] == []


def test_cli_prints_one_line_per_problem_and_exits_1(tmp_path: Path) -> None:
    project = example(tmp_path)
    edit(project.params_yaml, "  cv_folds: 3\n", "  cv_folds: 3\n  bogus: 1\n")
    edit(project.dvc_yaml, "      - notebooks/evaluate.ipynb\n", "")
    proc = sh(Path(shutil.which("nbp") or "nbp"), "check", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "dvc.yaml: stage 'evaluate': notebooks/evaluate.ipynb is not among its deps, so "
        "editing the notebook would not re-run it; add `- notebooks/evaluate.ipynb` under deps:",
        "params.yaml: [train] bogus is not in notebooks/train.ipynb's parameters cell; add "
        "`bogus = ...` there or remove it",
    ]
    assert proc.stderr == "nbp: 2 problem(s)\n"


def _problems(project: Project) -> list[str]:
    return [str(p) for p in check_project(project)]


BREAKAGES = {
    "missing param": (
        lambda p: edit_notebook(p.notebook("evaluate"),
                                lambda nb: params_cell(nb).__setitem__(
                                    "source", params_cell(nb).source + "\nnew_knob = 3")),
        "params.yaml: [evaluate] missing new_knob (declared in notebooks/evaluate.ipynb); add "
        "`new_knob: 3` under `evaluate:` or run `nbp stage add notebooks/evaluate.ipynb`",
    ),
    "default differs": (
        lambda p: edit(p.params_yaml, "  max_iter: 200", "  max_iter: 30"),
        "notebooks/train.ipynb: default max_iter = 200 but params.yaml [train] has 30; run "
        "`nbp sync` to rewrite the parameters cell (interactive runs would differ from "
        "`dvc repro`)",
    ),
    "wrong type": (
        lambda p: edit(p.params_yaml, "  cv_folds: 3", "  cv_folds: three"),
        "params.yaml: [train]: parameter 'cv_folds' is str 'three' but the notebook's default "
        "is int 3; set it to an int in params.yaml (or change the default in the parameters cell)",
    ),
    "section not in params list": (
        lambda p: edit(p.dvc_yaml, "      - common\n      - train\n", "      - common\n"),
        "dvc.yaml: stage 'train': params train.max_iter, train.max_depth",
    ),
    "common key not in params list": (
        lambda p: edit(p.dvc_yaml, "      - common.seed\n      - common.features\n",
                       "      - common.features\n"),
        "dvc.yaml: stage 'data': params common.seed reach the notebook but are not in its "
        "`params:` list, so changing them would not re-run the stage; add `- common.seed` "
        "under params:",
    ),
    "listed param undefined": (
        lambda p: edit(p.dvc_yaml, "      - data\n", "      - data\n      - common.nope\n"),
        "dvc.yaml: stage 'data': params lists `common.nope`, which params.yaml does not define "
        "(dvc repro would fail); remove it or add it to params.yaml",
    ),
    "listed param unused": (
        lambda p: (edit(p.params_yaml, "  seed: 42\n", "  seed: 42\n  unused: 1\n"),
                   edit(p.dvc_yaml, "      - data\n", "      - data\n      - common.unused\n")),
        "dvc.yaml: stage 'data': params lists `common.unused` but the notebook does not use it "
        "(a change would re-run the stage for nothing); remove it from params:",
    ),
    "report not an out": (
        lambda p: edit(p.dvc_yaml, "      - reports/train.html\n", ""),
        "dvc.yaml: stage 'train': reports/train.html (written by nbp run) is not among its outs;"
        " add `- reports/train.html` under outs:",
    ),
    "recorded metrics not declared": (
        lambda p: edit(p.dvc_yaml, "      - metrics/data.json\n", "      - metrics/other.json\n"),
        "dvc.yaml: stage 'data': the notebook records metrics/data.json but dvc.yaml does not "
        "declare it; add `- metrics/data.json` under metrics:",
    ),
    "unresolved reference": (
        lambda p: edit(p.dvc_yaml, "      - ${paths.golden_path}\n      - ${paths.model_dir}",
                       "      - ${paths.golden_path}\n      - ${paths.nope}\n"
                       "      - ${paths.model_dir}"),
        "dvc.yaml: stage 'evaluate': cannot resolve `${paths.nope}` (no such name in params.yaml "
        "or vars:); fix the reference",
    ),
    "outputs in source": (
        lambda p: edit_notebook(p.notebook("data"), lambda nb: nb.cells[1].outputs.append(
            nbformat.v4.new_output("stream", name="stdout", text="hi\n"))),
        "notebooks/data.ipynb: source notebook carries outputs (cells 2); clear them",
    ),
    "kernel not installed": (
        lambda p: edit_notebook(p.notebook("data"), lambda nb: nb.metadata.__setitem__(
            "kernelspec", {"name": "julia-1.9", "display_name": "Julia", "language": "julia"})),
        "notebooks/data.ipynb: a julia notebook cannot be an nbpipeline stage",
    ),
    "no parameters cell": (
        lambda p: edit_notebook(p.notebook("evaluate"), lambda nb: params_cell(nb).metadata
                                .__setitem__("tags", [])),
        "notebooks/evaluate.ipynb: no cell tagged 'parameters'; tag the code cell",
    ),
    "notebook missing": (
        lambda p: p.notebook("evaluate").unlink(),
        "dvc.yaml: stage 'evaluate' runs `nbp run evaluate` but notebooks/evaluate.ipynb does "
        "not exist; create the notebook or fix the cmd",
    ),
    "no kernelspec": (
        lambda p: edit_notebook(p.notebook("data"), lambda nb: nb.metadata.pop("kernelspec")),
        "notebooks/data.ipynb: no kernelspec in the notebook metadata; open it in JupyterLab",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_each_problem_has_its_message(tmp_path: Path, case: str) -> None:
    project = example(tmp_path)
    breakage, expected = BREAKAGES[case]
    breakage(project)
    problems = _problems(project)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


def test_kernel_not_installed(tmp_path: Path) -> None:
    project = example(tmp_path)
    edit_notebook(project.notebook("data"), lambda nb: nb.metadata.__setitem__(
        "kernelspec", {"name": "py-old", "display_name": "Old", "language": "python"}))
    [problem] = _problems(project)
    assert problem.startswith("notebooks/data.ipynb: kernel 'py-old' is not installed "
                              "(installed: ")
    assert "python3" in problem


def test_sync_rewrites_defaults_keeping_comments_and_layout(tmp_path: Path) -> None:
    project = example(tmp_path)
    edit(project.params_yaml, "  max_iter: 200", "  max_iter: 30")
    edit(project.params_yaml, "  scoring: roc_auc", "  scoring: average_precision")
    edit(project.params_yaml, "  seed: 42", "  seed: 7")
    edit_notebook(project.notebook("train"), lambda nb: params_cell(nb).__setitem__(
        "source", params_cell(nb).source.replace("max_iter = 200", "max_iter = 200  # boosting")))
    assert len(_problems(project)) == 5  # three in train; data and evaluate use seed too
    changed = sync_notebooks(project)
    assert changed == [
        "notebooks/data.ipynb: parameters cell now has params.yaml's seed",
        "notebooks/train.ipynb: parameters cell now has params.yaml's seed, max_iter, scoring",
        "notebooks/evaluate.ipynb: parameters cell now has params.yaml's seed",
    ]
    source = params_cell(nbformat.read(project.notebook("train"), as_version=4)).source
    assert source.startswith("seed = 7\n") and "\nmax_iter = 30  # boosting\n" in source
    assert '\n    "carrier": "category",\n' in source  # a long mapping: one item a line
    assert 'scoring = "average_precision"' in source and "max_depth = [4, 8]" in source
    assert _problems(project) == []
    assert sync_notebooks(project) == []


def test_sync_refuses_unknown_params(tmp_path: Path) -> None:
    project = example(tmp_path)
    edit(project.params_yaml, "  cv_folds: 3\n", "  cv_folds: 3\n  bogus: 1\n")
    with pytest.raises(ParamsError, match=r"unknown parameter\(s\) bogus"):
        sync_notebooks(project)


@pytest.mark.parametrize("name", ["demo-bank-customer-churn", "example-get-started-experiments",
                                  "example-pokemon-classifier"])
def test_real_world_dvc_yaml_without_notebook_stages(tmp_path: Path, name: str) -> None:
    shutil.copytree(FIXTURES / "dvc-examples" / name, tmp_path / name)
    assert check_project(Project(tmp_path / name)) == []


@pytest.mark.parametrize("example_file", sorted(
    p.name for p in (FIXTURES / "dvc-examples" / "dvcyaml-schema" / "valid").glob("*.yaml")))
def test_schema_examples_are_read_without_crashing(tmp_path: Path, example_file: str) -> None:
    shutil.copy(FIXTURES / "dvc-examples" / "dvcyaml-schema" / "valid" / example_file,
                tmp_path / "dvc.yaml")
    assert check_project(Project(tmp_path)) == []


FUZZ_VALUES = [None, True, 1.5, "${nope}", [None], [[1]], [{"a": 1, "b": 2}], [{3: None}],
               [{"params.yaml": "train"}], [{"params.yaml": 3}], {3: [1]}, ["${item}"]]
FUZZ_FIELDS = ["cmd", "deps", "outs", "metrics", "plots", "params", "vars", "wdir", "foreach",
               "matrix", "do"]


def test_dvc_yaml_forms_are_problems_or_one_error_line(tmp_path: Path) -> None:
    """dvc.yaml in shapes DVC's schema allows and shapes it does not: each field of a
    notebook stage, `stages:`, `vars:` and the top level set to each of FUZZ_VALUES.
    `nbp run`'s stage lookup and `nbp stage add`'s reader (all of them) and `nbp check`
    (one value of each shape per field: it reads every notebook) give problem lines or one
    error line, never a traceback (issue 16, "look for siblings": `plots: true` and
    `stages: [null]` were tracebacks)."""
    from nbpipeline import yamlio
    from nbpipeline.errors import NbpipelineError
    from nbpipeline.pipeline.stages import DvcYaml, load_stage

    project = example(tmp_path)
    base = yamlio.parse(project.dvc_yaml.read_text(), "dvc.yaml", NbpipelineError)
    docs = []
    for field, value in itertools.product(FUZZ_FIELDS, FUZZ_VALUES):
        stage = {**base["stages"]["train"], field: value}
        docs.append({**base, "stages": {**base["stages"], "train": stage}})
    for value in FUZZ_VALUES:
        docs += [{**base, "stages": value}, {**base, "vars": value}, value,
                 {**base, "stages": {**base["stages"], 7: value, "x": value}}]
    readers = [lambda: load_stage(project, "train"),
               lambda: DvcYaml(project, editable=True).notebook_stages()]
    checked = [lambda: [str(p) for p in check_project(project)]]
    for number, doc in enumerate(docs):
        project.dvc_yaml.write_text(yamlio.dump(doc), encoding="utf-8")
        for read in readers + (checked if number % 20 == 0 else []):
            try:
                found = read()
            except NbpipelineError as exc:
                assert "\n" not in str(exc), str(exc)
                continue
            for line in found if isinstance(found, list) else []:
                assert "\n" not in line and line.split(":")[0] in (
                    "dvc.yaml", "params.yaml", *(f"notebooks/{n}.ipynb" for n in (
                        "data", "train", "evaluate", "monitor"))), line


def test_a_broken_params_yaml_is_one_problem_not_one_per_reference(tmp_path: Path) -> None:
    project = example(tmp_path)
    with open(project.params_yaml, "a") as fh:
        fh.write("extra:\n  a: 1\n  a: 2\n")
    assert [str(p) for p in check_project(project)] == [
        f"params.yaml: params.yaml:{len(project.params_yaml.read_text().splitlines())}: "
        "duplicate key 'extra.a' (also at line "
        f"{len(project.params_yaml.read_text().splitlines()) - 1}); DVC refuses it too: keep "
        "one of the two lines"]
