"""params.yaml loading and the choice of a stage's values."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbpipeline.errors import ParamsError
from nbpipeline.params import load_params, stage_values

PARAMS = {
    "common": {"seed": 1, "threshold": 0.5},
    "paths": {"train_path": "data/train.parquet"},
    "train": {"max_iter": 10, "threshold": 0.7},
}


def test_stage_section_overrides_common_then_paths() -> None:
    declared = {"max_iter": 5, "threshold": 0.1, "seed": 0, "train_path": "x"}
    assert stage_values(PARAMS, "train", declared) == {
        "max_iter": 10, "threshold": 0.7, "seed": 1, "train_path": "data/train.parquet",
    }


def test_common_keys_the_notebook_does_not_declare_are_not_injected() -> None:
    assert stage_values(PARAMS, "train", {"max_iter": 5, "threshold": 0.0}) == {
        "max_iter": 10, "threshold": 0.7,
    }


def test_unknown_stage_key_names_key_file_and_fix() -> None:
    with pytest.raises(ParamsError) as err:
        stage_values(PARAMS, "train", {"threshold": 0.1}, notebook="notebooks/train.ipynb")
    msg = str(err.value)
    assert "params.yaml [train]" in msg and "max_iter" in msg
    assert "notebooks/train.ipynb" in msg and "add e.g. `max_iter = ...`" in msg


def test_missing_parameter_names_it_and_suggests_the_default() -> None:
    with pytest.raises(ParamsError, match=r"missing parameter\(s\) depth .*`depth: 3`"):
        stage_values(PARAMS, "train", {"max_iter": 1, "threshold": 0.1, "depth": 3})


@pytest.mark.parametrize(
    ("default", "value"),
    [(1, "ten"), (1, 2.5), (True, 1), (1, True), ("a", 3), ({"a": 1}, [1])],
)
def test_mistyped_value_is_refused(default: object, value: object) -> None:
    with pytest.raises(ParamsError, match=r"parameter 'p' is .* default is"):
        stage_values({"s": {"p": value}}, "s", {"p": default})


@pytest.mark.parametrize(
    ("default", "value", "expected"),
    [(0.5, 1, 1.0), (None, "anything", "anything"), ([1, 2], 8, 8), ([1], [3, 4], [3, 4])],
)
def test_compatible_values_are_accepted(default: object, value: object, expected: object) -> None:
    assert stage_values({"s": {"p": value}}, "s", {"p": default}) == {"p": expected}


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  a: 1\n  b: [1, 2\n")
    with pytest.raises(ParamsError, match=r"params\.yaml:\d+:\d+: malformed YAML"):
        load_params(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(path)


def test_section_must_be_a_mapping() -> None:
    with pytest.raises(ParamsError, match="section 'train' must be a mapping"):
        stage_values({"train": [1, 2]}, "train", {"a": 1})


def test_missing_params_file_is_empty(tmp_path: Path) -> None:
    assert load_params(tmp_path / "params.yaml") == {}


@pytest.mark.parametrize(("default", "value", "item"), [
    ([4, 8], ["four", 8], r"\[0\] is str 'four'"),  # issue 16, defect 7: GridSearchCV "won"
    ([0.05, 0.1], [0.1, "fast"], r"\[1\] is str 'fast'"),
    ([4, 8], [4, 2.5], r"\[1\] is float 2.5"),
    (["carrier"], ["origin", 3], r"\[1\] is int 3"),
    ({"roc_auc": [0.6, 0.9]}, {"roc_auc": [0.6, "high"]}, r"\.roc_auc\[1\] is str 'high'"),
    ({"tp": 40.0}, {"fp": "minus fifteen"}, r"\.fp is str 'minus fifteen'"),
    ([[1, 2]], [[1, True]], r"\[0\]\[1\] is bool True"),
])
def test_list_and_mapping_items_are_type_checked(default: object, value: object,
                                                 item: str) -> None:
    with pytest.raises(ParamsError, match=r"^params.yaml \[s\]: parameter 'p' item " + item):
        stage_values({"s": {"p": value}}, "s", {"p": default})


def test_items_that_fit_are_accepted_and_ints_become_floats() -> None:
    declared = {"depth": [4, 8], "rate": [0.05], "limits": {"auc": [0.6, 0.9]}, "any": []}
    given = {"depth": [None, 6], "rate": [1, 0.5], "limits": {"auc": [0, 1], "f1": [0.5, 1]},
             "any": ["x", 1, {"y": 2}]}
    assert stage_values({"s": given}, "s", declared) == {
        "depth": [None, 6], "rate": [1.0, 0.5], "limits": {"auc": [0.0, 1.0], "f1": [0.5, 1.0]},
        "any": ["x", 1, {"y": 2}]}


def test_duplicate_key_is_refused_naming_both_lines(tmp_path: Path) -> None:
    # issue 16, defect 7: the last value silently won
    path = tmp_path / "params.yaml"
    path.write_text("common:\n  seed: 1\ntrain:\n  max_depth: 4\n  cv_folds: 3\n  max_depth: 8\n")
    with pytest.raises(ParamsError, match=r"^params.yaml:6: duplicate key 'train.max_depth' "
                       r"\(also at line 4\); .*keep one of the two lines$"):
        load_params(path)


def test_params_are_read_as_dvc_reads_them(tmp_path: Path) -> None:
    # issue 16, defect 7: PyYAML (YAML 1.1) read `No` as False, DVC (YAML 1.2) as 'No'
    from dvc.utils.serialize import parse_yaml

    text = "s:\n  answer: No\n  flag: off\n  big: 1e3\n  octal: 010\n  when: 2013-09-01\n"
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path) == parse_yaml(text, str(path))
    assert load_params(path)["s"]["answer"] == "No"


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]\n", r"top level must be a mapping .* found list"),
    ("1: {a: 1}\n", r"top-level key 1 is not a name"),
    ("s:\n  ? [a]\n  : 1\n", r"\[s\] key \('a',\) is not a parameter name"),
    ("s: &x\n  a: *x\n", r"alias \(\*name\) is used inside its own anchor"),
    ("a: 1\n---\nb: 2\n", r"^params.yaml:2:1: malformed YAML \(.*single document"),
    ("s: !!python/object:os.system x\n", r"^params.yaml:1:4: malformed YAML \(could not determine"),
])
def test_odd_yaml_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=message) as err:
        load_params(path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- fuzz: what users write
# (issue 16, "look for siblings"): hypothesis-generated values and shapes for every key of
# every stage of the example, written to params.yaml as text, then read as `nbp run` reads
# them. Each one is either refused with one ParamsError line naming params.yaml, the
# section and the parameter, or accepted with the notebook default's type all the way down.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from projects import REPO  # noqa: E402

from nbpipeline import yamlio  # noqa: E402
from nbpipeline.notebook import notebook_parameters, read_notebook  # noqa: E402

EXAMPLE = load_params(REPO / "params.yaml")
DECLARED = {nb.stem: notebook_parameters(read_notebook(nb), nb)
            for nb in sorted((REPO / "notebooks").glob("*.ipynb"))}
KEYS = [(stage, name) for stage, names in DECLARED.items() for name in names]
TRICKY = ["No", "yes", "off", "1e3", "0x10", "010", "2013-09-01", "null", "~", "", " ", "#",
          "a: b", "- x", "'", '"', "\t", "\u00e9", "\u2028", "${paths.x}", "[1, 2]"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.sampled_from(TRICKY))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(min_size=1, max_size=8) | st.sampled_from(TRICKY),
                                        inner, max_size=4), max_leaves=12)


def _fits(default: object, value: object) -> bool:
    """The test's own oracle of "has the default's type all the way down"."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, float)  # ints were made floats
    if isinstance(default, list):
        items = value if isinstance(value, list) else [value]
        return all(not default or any(_fits(d, v) for d in default) for v in items)
    if isinstance(default, dict):
        return isinstance(value, dict) and all(
            _fits(default[k], v) if k in default else
            (not default or any(_fits(d, v) for d in default.values()))
            for k, v in value.items())
    return type(value) is type(default)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES, where=st.sampled_from(["own", "common"]))
def test_fuzzed_params_values_are_refused_in_one_line_or_fit_the_default(
    tmp_path_factory: pytest.TempPathFactory, key: tuple[str, str], value: object, where: str,
) -> None:
    stage, name = key
    params = {section: dict(values) for section, values in EXAMPLE.items()}
    section = stage if where == "own" or name not in params.get("common", {}) else "common"
    params.setdefault(section, {})[name] = value
    path = tmp_path_factory.mktemp("fuzz") / "params.yaml"
    path.write_text(yamlio.dump(params), encoding="utf-8")
    try:
        got = stage_values(load_params(path), stage, DECLARED[stage])
    except ParamsError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("params.yaml")
        assert f"'{name}'" in message or name in message
        return
    assert _fits(DECLARED[stage][name], got[name]), (stage, name, value, got[name])


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_fuzzed_params_text_is_read_or_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject,
) -> None:
    """Edits of the example's params.yaml text: a character dropped or doubled, a line
    repeated (a duplicate key), a tab, a stray `:` `-` `&` `*` `!` `{` `[` `%` inserted."""
    text = (REPO / "params.yaml").read_text()
    lines = text.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["drop", "double", "line", "insert"]))
        if edit == "line":
            line = data.draw(st.sampled_from(lines))
            text = text[:at] + line + text[at:]
        elif edit == "insert":
            text = text[:at] + data.draw(st.sampled_from(list(":-&*!{[%\t'\"#|>?@`,"))) + text[at:]
        elif edit == "drop":
            text = text[:at] + text[at + 1:]
        else:
            text = text[:at] + text[at:at + 1] + text[at:]
    path = tmp_path_factory.mktemp("fuzz") / "params.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        params = load_params(path)
        for stage, declared in DECLARED.items():
            stage_values(params, stage, declared)
    except ParamsError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("params.yaml"), str(exc)


@pytest.mark.parametrize("max_depth", [[-3, 8], [8, 0]])
def test_a_search_value_that_cannot_fit_fails_the_train_stage(max_depth: list[int]) -> None:
    """The example's (and the scaffold's) search cell, run on a small table: a max_depth of
    the right type that scikit-learn refuses must fail the stage. GridSearchCV's default
    error_score=nan dropped those fits and the stage "succeeded" (issue 16 sibling)."""
    import time

    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import GridSearchCV

    from nbpipeline.modeling import build_model, fit_search, search_folds, search_on
    from nbpipeline.release.candidate import contract_from_params

    cell = next(c.source for c in read_notebook(REPO / "notebooks" / "train.ipynb").cells
                if "GridSearchCV(" in c.source and c.cell_type == "code")
    frame = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, -1]]
    kinds = {name: "number" for name in frame.columns[:3]}
    contract = contract_from_params(frame, features=kinds, target="target", task="classification",
                                    positive_label=1, description="", time_column=None)
    names = {"pd": pd, "time": time, "GridSearchCV": GridSearchCV, "build_model": build_model,
             "fit_search": fit_search, "search_folds": search_folds, "contract": contract,
             "train": frame,
             "target": "target", "max_depth": max_depth, "learning_rate": [0.1],
             "search_rows": 300, "max_iter": 5, "min_samples_leaf": 5, "seed": 0,
             "cv_folds": 2, "scoring": "roc_auc", "search_on": search_on,
             "search_backend": "local", "dask_scheduler": "", "dask_local": "cluster"}
    with pytest.raises(ValueError, match="max_depth"):
        exec(cell, names)
