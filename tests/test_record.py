"""nbpipeline.record: the files DVC reads as metrics, plots and artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nbpipeline import record


@pytest.fixture(autouse=True)
def _stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBPIPELINE_STAGE", "train")
    monkeypatch.setenv("NBPIPELINE_ROOT", str(tmp_path))


def test_dotted_names_nest_and_numpy_values_become_json(tmp_path: Path) -> None:
    record.metric("valid.roc_auc", np.float64(0.71))
    record.metrics({"valid.rows": np.int64(10), "loss": float("nan")})
    data = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert data == {"valid": {"roc_auc": 0.71, "rows": 10}, "loss": None}
    assert not list((tmp_path / "metrics").glob("*.tmp"))


def test_plot_rows_become_csv(tmp_path: Path) -> None:
    record.plot("roc", [{"fpr": 0.0, "tpr": 0.0}, {"fpr": 1.0, "tpr": 1.0}])
    text = (tmp_path / "plots" / "train" / "roc.csv").read_text()
    assert text == "fpr,tpr\n0.0,0.0\n1.0,1.0\n"


def test_artifact_is_recorded_with_its_hash(tmp_path: Path) -> None:
    model = tmp_path / "models" / "m.bin"
    model.parent.mkdir()
    model.write_bytes(b"abc")
    record.artifact("models/m.bin", kind="model")
    index = json.loads((tmp_path / "metrics" / "train.artifacts.json").read_text())
    assert index["models/m.bin"]["sha256"].startswith("ba7816bf")
    assert index["models/m.bin"]["kind"] == "model" and index["models/m.bin"]["size"] == 3


def test_unknown_stage_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NBPIPELINE_STAGE")
    with pytest.raises(RuntimeError, match=r"call nbpipeline.init\('<stage>'\)"):
        record.metric("a", 1)


def test_env_variable_names_have_one_home() -> None:
    """project.py spells the variables that say where a project's files are; record (in
    kernels) and the server import them. NBPIPELINE_ROOT is still also spelled by the
    runner's side (listed here until it imports project's)."""
    from nbpipeline import project

    package = Path(project.__file__).parent
    elsewhere = {"NBPIPELINE_ROOT": {"__init__.py", "pipeline/run.py", "schedule/tick.py"}}
    for name in (project.ROOT_ENV, project.SEGMENT_ENV, project.REGISTRY_ENV):
        spelled = {str(p.relative_to(package)) for p in package.rglob("*.py")
                   if f'"{name}"' in p.read_text(encoding="utf-8")}
        assert spelled - {"project.py"} <= elsewhere.get(name, set()), name
