"""The parameters-cell contract and notebook reading."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from projects import REPO

from nbpipeline.errors import NotebookError
from nbpipeline.notebook import (
    notebook_parameters,
    parse_parameters,
    read_notebook,
    strip_outputs,
    strip_volatile,
)


def test_literals_and_annotations_are_parsed_without_executing() -> None:
    src = "# comment\na = 1\nb: float = -2.5\nc = [1, 'x', None]\nd = {'k': True}\n"
    assert parse_parameters(src) == {"a": 1, "b": -2.5, "c": [1, "x", None], "d": {"k": True}}


@pytest.mark.parametrize(
    ("src", "needle"),
    [
        ("import os\n", "only `name = literal` assignments"),
        ("a = os.getcwd()\n", "`a` must be a literal"),
        ("a, b = 1, 2\n", "assign to a plain name"),
        ("a.b = 1\n", "assign to a plain name"),
        ("a = (\n", "syntax error"),
    ],
)
def test_non_literal_parameters_cells_are_refused(src: str, needle: str) -> None:
    with pytest.raises(NotebookError, match="line 1") as err:
        parse_parameters(src)
    assert needle in str(err.value)


def _nb(*cells: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=list(cells))


def test_missing_parameters_tag_says_how_to_fix() -> None:
    with pytest.raises(NotebookError, match="no cell tagged 'parameters'.*nbp stage add"):
        notebook_parameters(_nb(nbformat.v4.new_code_cell("a = 1")), "x.ipynb")


def test_two_parameters_cells_are_refused() -> None:
    cells = [nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]}) for _ in "ab"]
    with pytest.raises(NotebookError, match="cells 1, 2 are all tagged"):
        notebook_parameters(_nb(*cells), "x.ipynb")


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_text('{"cells": [')
    with pytest.raises(NotebookError, match=r"broken\.ipynb: not a notebook \(invalid JSON"):
        read_notebook(path)


def test_old_nbformat_is_refused_with_upgrade_command(tmp_path: Path) -> None:
    path = tmp_path / "old.ipynb"
    path.write_text(json.dumps({"nbformat": 3, "nbformat_minor": 0, "worksheets": []}))
    with pytest.raises(NotebookError, match="nbformat v3 is too old.*nbconvert --to notebook"):
        read_notebook(path)


def test_strip_volatile_removes_timestamps_and_counts() -> None:
    cell = nbformat.v4.new_code_cell("1", execution_count=3)
    cell.metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00"}
    cell.metadata["papermill"] = {"duration": 1.2}
    result = nbformat.v4.new_output("execute_result", {"text/plain": "1"}, execution_count=3)
    cell.outputs = [result]
    nb = _nb(cell)
    nb.metadata["papermill"] = {"start_time": "t", "end_time": "t", "duration": 1, "parameters": {}}
    strip_volatile(nb)
    assert nb.cells[0].execution_count is None
    assert nb.cells[0].outputs[0].execution_count is None
    assert "execution" not in nb.cells[0].metadata and "papermill" not in nb.cells[0].metadata
    assert nb.metadata["papermill"] == {"parameters": {}}


def test_committed_notebooks_have_no_outputs() -> None:
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = read_notebook(path)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs, f"{path.name} has outputs; run strip_outputs"
                assert cell.execution_count is None, path.name
        assert strip_outputs(read_notebook(path)) == nb


@pytest.mark.parametrize(("src", "message"), [
    ("a = 1\nb = 2\na = 3", r"line 3: `a` is already assigned at line 1; keep one"),
    ("a = {1, 2}", r"line 1: `a` holds a set, which params.yaml cannot hold"),
    ("a = [1j]", r"line 1: `a` holds a complex"),
    ("a = 1\n\nb = 2\x00", r"line 3: syntax error: source code string cannot contain null"),
    ("a = '\udcff'", r"cannot parse it \(UnicodeEncodeError"),
])
def test_parameters_cell_siblings_of_duplicate_keys_are_refused(src: str, message: str) -> None:
    # issue 16 siblings: a name assigned twice silently kept the last value (like a duplicate
    # params.yaml key); a set or complex default could not round-trip through params.yaml
    with pytest.raises(NotebookError, match=r"^nb cell 2 \(parameters\):? " + message):
        parse_parameters(src, "nb cell 2 (parameters)")


def test_fuzzed_parameters_cells_are_refused_in_one_line_or_round_trip_params_yaml() -> None:
    """Hypothesis-built parameters cells: what parses is written to params.yaml by the one
    writer and read back unchanged by the one reader; the rest is one NotebookError line."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from nbpipeline import yamlio

    names = st.sampled_from(["a", "b", "max_depth", "No", "_x", "x1", "a.b", "1a", "a b"])
    literals = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
        | st.text(max_size=10) | st.sampled_from(["No", "off", "1e3", "${x}", "~"]),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                    max_size=3),
        max_leaves=8).map(repr)
    odd = st.sampled_from(["{1, 2}", "1j", "b'x'", "...", "-x", "f(1)", "[", "1 +", "'''",
                           "(" * 120, "lambda: 1", "10**9", "x if y else z", "\x00", "\ufeff1"])
    line = st.one_of(
        st.tuples(names, st.sampled_from([" = ", ": int = ", " += ", " = b = "]),
                  literals | odd).map("".join),
        st.sampled_from(["# comment", "", "import os", "x, y = 1, 2", "pass", "if 1: a = 1",
                         "a = 1; b = 2", "  a = 1", "\ta = 1", "print(1)"]))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(line, max_size=6).map("\n".join))
    def check(src: str) -> None:
        try:
            values = parse_parameters(src, "nb cell 2 (parameters)")
        except NotebookError as exc:
            assert str(exc).startswith("nb cell 2 (parameters)") and "\n" not in str(exc)
            return
        back = yamlio.parse(yamlio.dump({"s": values}), "params.yaml", NotebookError)["s"]
        assert back == json.loads(json.dumps(values)), src  # (tuples come back as lists)

    check()
