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
