"""Test helper: small real candidate directories (skops model + metadata), as train writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression


def make_candidate(directory: Path, *, c: float = 1.0, extra: dict[str, Any] | None = None) -> Path:
    """Fit a tiny logistic regression (breast cancer data) and write it as a candidate."""
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x = x.iloc[:, :4]
    model = LogisticRegression(C=c, max_iter=500).fit(x, y)
    directory.mkdir(parents=True, exist_ok=True)
    blob = sio.dumps(model)
    (directory / "model.skops").write_bytes(blob)
    ref = x.head(50).assign(target=y.head(50), probability=model.predict_proba(x.head(50))[:, 1])
    ref.to_parquet(directory / "reference.parquet", index=False)
    import hashlib

    metadata = {
        "created": "2026-01-01T00:00:00+00:00",
        "params": {"C": c},
        "data": {"train": {"path": "data/train.parquet", "sha256": "ab" * 32, "rows": len(x)}},
        "git_rev": "0" * 40,
        "git_dirty": False,
        "features": [{"name": name, "kind": "number"} for name in x.columns],
        "target": {"name": "target", "description": "malignant"},
        "model_sha256": hashlib.sha256(blob).hexdigest(),
        "trusted_types": sorted(sio.get_untrusted_types(data=blob)),
        **(extra or {}),
    }
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return directory


def features_frame() -> pd.DataFrame:
    """A few rows the candidate models accept."""
    x, _ = load_breast_cancer(return_X_y=True, as_frame=True)
    return x.iloc[:5, :4]
