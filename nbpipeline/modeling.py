"""The example's model: pipeline, candidate files on disk, and evaluation metrics.

A candidate is a directory (see docs/contracts.md): ``model.skops`` (skops format, loaded
only with the trusted types recorded beside it, never plain pickle), ``metadata.json``
and ``reference.parquet``.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbpipeline.datasets import CATEGORICAL, FEATURES, NUMERIC, TARGET
from nbpipeline.errors import NbpipelineError
from nbpipeline.pipeline.gitinfo import git_output
from nbpipeline.project import atomic_path, write_text_atomic
from nbpipeline.record import file_sha256, json_value

LIBRARIES = ("scikit-learn", "pandas", "numpy", "skops", "papermill", "dvc", "nbpipeline")


def build_pipeline(
    *, max_iter: int, min_samples_leaf: int, seed: int, max_depth: int | None = None,
    learning_rate: float = 0.1, categorical: list[str] = CATEGORICAL,
    numeric: list[str] = NUMERIC,
) -> Any:
    """Ordinal-encode the categories (unknown -> missing) and fit gradient boosting.

    The server scores this shape with compiled trees (nbpipeline/serve/scorer.py), ~50x
    faster per row than ``predict_proba``; keep it or check ``/health``'s "scorers".
    """
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    encode = ColumnTransformer(
        [
            (
                "categories",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                ),
                categorical,
            ),
            ("numbers", "passthrough", numeric),
        ],
        verbose_feature_names_out=False,
    )
    model = HistGradientBoostingClassifier(
        max_iter=max_iter, max_depth=max_depth, learning_rate=learning_rate,
        min_samples_leaf=min_samples_leaf, categorical_features=list(range(len(categorical))),
        random_state=seed, early_stopping=False,
    )
    return Pipeline([("encode", encode), ("model", model)])


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a model's behaviour."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def feature_schema(frame: Any) -> list[dict[str, Any]]:
    """The input contract: each feature's kind and, for categories, the values seen."""
    schema: list[dict[str, Any]] = []
    for name in FEATURES:
        if name in CATEGORICAL:
            values = sorted(str(v) for v in frame[name].dropna().unique())
            schema.append({"name": name, "kind": "category", "values": values})
        else:
            schema.append({"name": name, "kind": "number"})
    return schema


def save_candidate(
    model: Any, model_dir: str | Path, *, train: Any, reference: Any, params: dict[str, Any],
    data_paths: dict[str, str], search: dict[str, Any],
) -> dict[str, Any]:
    """Write model.skops, metadata.json and reference.parquet into ``model_dir``."""
    import skops.io as sio

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = sio.dumps(model)
    trusted = sorted(sio.get_untrusted_types(data=blob))
    with atomic_path(out / "model.skops") as tmp:
        tmp.write_bytes(blob)
    with atomic_path(out / "reference.parquet") as tmp:
        reference.to_parquet(tmp, index=False)
    metadata = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": params,
        "data": {
            split: {"path": path, "sha256": file_sha256(path), "rows": int(_rows(path))}
            for split, path in data_paths.items()
        },
        "git_rev": git_output(Path.cwd(), "rev-parse", "HEAD"),
        "git_dirty": bool(git_output(Path.cwd(), "status", "--porcelain", "--untracked-files=no")),
        "versions": library_versions(),
        "features": feature_schema(train),
        "target": {"name": TARGET, "description": "arrival delay above the threshold (1 = late)"},
        "search": search,
        "model_sha256": file_sha256(out / "model.skops"),
        "trusted_types": trusted,
    }
    write_text_atomic(out / "metadata.json", json.dumps(json_value(metadata), indent=2) + "\n")
    return metadata


def _rows(path: str) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def read_candidate_metadata(
    model_dir: str | Path, error: type[NbpipelineError] = NbpipelineError
) -> dict[str, Any]:
    """metadata.json of the candidate in ``model_dir``; ``error`` names the file and the fix
    when the model or its metadata is missing or the metadata is not JSON."""
    directory = Path(model_dir)
    meta_path, model_path = directory / "metadata.json", directory / "model.skops"
    if not meta_path.is_file() or not model_path.is_file():
        raise error(
            f"{directory}: no candidate model (model.skops + metadata.json); run the train "
            "stage first (`dvc repro train`)"
        )
    try:
        metadata: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise error(f"{meta_path}: not valid JSON ({exc}); re-run `dvc repro train`") from exc
    return metadata


def load_candidate(model_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load a candidate saved by :func:`save_candidate`, checking its hash and types."""
    import skops.io as sio

    directory = Path(model_dir)
    model_path = directory / "model.skops"
    metadata = read_candidate_metadata(directory)
    actual = file_sha256(model_path)
    if metadata.get("model_sha256") not in (None, actual):
        raise NbpipelineError(
            f"{model_path}: sha256 {actual[:12]} does not match metadata.json "
            f"({metadata['model_sha256'][:12]}); the file was changed — re-run `dvc repro train`"
        )
    model = sio.load(model_path, trusted=metadata.get("trusted_types", []))
    return model, metadata


def classification_metrics(y_true: Any, score: Any, threshold: float) -> dict[str, float]:
    """Ranking and thresholded metrics of binary scores."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        brier_score_loss,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = (score >= threshold).astype(int)
    return {
        "roc_auc": roc_auc_score(y_true, score),
        "average_precision": average_precision_score(y_true, score),
        "log_loss": log_loss(y_true, score, labels=[0, 1]),
        "brier": brier_score_loss(y_true, score),
        "accuracy": accuracy_score(y_true, predicted),
        "precision": precision_score(y_true, predicted, zero_division=0),
        "recall": recall_score(y_true, predicted, zero_division=0),
        "f1": f1_score(y_true, predicted, zero_division=0),
        "positive_rate": float(y_true.mean()),
        "rows": float(len(y_true)),
    }
