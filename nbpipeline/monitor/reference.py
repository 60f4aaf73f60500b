"""The reference distribution (training rows, or a slice of a table) and the binning shared by
SQL and numpy.

Each monitored column gets a :class:`Binning` that turns a value into a small integer
code (0..127), computed *identically* by numpy for the reference rows and by an SQL
expression for the logged rows:

* numbers: code 0 = below the reference minimum, 1..``GRID_BINS`` = equal-width bins
  between the reference minimum and maximum, ``GRID_BINS + 1`` = at or above the maximum;
* categories: 1..k = the reference's (and metadata's) most frequent values, 0 = any
  other (unseen) value;
* ``MISSING`` (127) = NULL / NaN.

Seven bits per code let the scan pack nine columns into one SQLite integer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nbpipeline.dataset import read_table
from nbpipeline.errors import MonitorError, NbpipelineError
from nbpipeline.predlog.table import feature_column

GRID_BINS = 124
MISSING = 127
CODES = 128
MAX_CATEGORIES = 120
OUTPUT = "probability"
_SEP, _PAD = "\x1f", "\x1e"


@dataclass(frozen=True)
class Binning:
    """How one column (a feature, or the model's probability) is binned."""

    name: str
    kind: str  # "number" | "category" | "output"
    column: str  # SQL expression of the raw value
    lo: float = 0.0
    scale: float = 1.0
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return max((len(c) for c in self.categories), default=0) + 3

    def sql(self) -> str:
        """SQL expression giving this column's code for one logged row."""
        if self.kind == "category":
            slots = "".join(f"{_SEP}{c}{_SEP}".ljust(self.width, _PAD) for c in self.categories)
            pattern = f"'{_SEP}' || {self.column} || '{_SEP}'"
            code = f"((instr({_quote(slots)}, {pattern}) + {self.width - 1}) / {self.width})"
        else:
            code = (
                f"MIN(MAX(CAST(({self.column} - {self.lo!r}) * {self.scale!r} + 1.0 AS INTEGER),"
                f" 0), {GRID_BINS + 1})"
            )
        return f"COALESCE({code}, {MISSING})"

    def codes(self, values: Any) -> np.ndarray:
        """The same codes as :meth:`sql`, for an array-like of values (numpy)."""
        if self.kind == "category":
            index = {c: i + 1 for i, c in enumerate(self.categories)}
            return np.array(
                [MISSING if _missing(v) else index.get(str(v), 0) for v in values], dtype=np.int64
            )
        x = _floats(values)
        with np.errstate(invalid="ignore"):
            raw = np.floor((x - self.lo) * self.scale + 1.0)
        code = np.clip(np.nan_to_num(raw, nan=0.0), 0, GRID_BINS + 1).astype(np.int64)
        code[np.isnan(x)] = MISSING
        return code

    def label(self, code: int) -> str:
        """Human-readable meaning of a code (for tables and plots)."""
        if code == MISSING:
            return "missing"
        if self.kind == "category":
            return self.categories[code - 1] if code > 0 else "(other)"
        if code == 0:
            return f"< {self.lo:g}"
        if code == GRID_BINS + 1:
            return f">= {self.lo + GRID_BINS / self.scale:g}"
        left = self.lo + (code - 1) / self.scale
        return f"[{left:.4g}, {left + 1 / self.scale:.4g})"


def _floats(values: Any) -> np.ndarray:
    if hasattr(values, "to_numpy"):
        return np.asarray(values.to_numpy(dtype=float, na_value=np.nan), dtype=float)
    return np.asarray(values, dtype=float)


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def number_binning(name: str, values: Any, *, kind: str = "number", column: str = "") -> Binning:
    """Equal-width grid between the minimum and maximum of the reference ``values``."""
    x = _floats(values)
    x = x[~np.isnan(x)]
    lo, hi = (float(x.min()), float(x.max())) if len(x) else (0.0, 1.0)
    if kind == "output":
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    scale = GRID_BINS / ((hi - lo) * (1 + 1e-12))
    return Binning(name, kind, column or feature_column(name), lo, scale)


def category_binning(name: str, values: Any, declared: list[str] | None = None) -> Binning:
    """The most frequent reference values (plus declared ones), at most MAX_CATEGORIES."""
    import pandas as pd

    counts = pd.Series(values).dropna().astype(str).value_counts()
    ordered = list(counts.index) + [v for v in (declared or []) if v not in counts.index]
    usable = [c for c in ordered if _SEP not in c and _PAD not in c][:MAX_CATEGORIES]
    return Binning(name, "category", feature_column(name), categories=tuple(usable))


@dataclass
class Reference:
    """Binnings and reference histograms for every monitored column."""

    binnings: list[Binning]
    counts: dict[str, np.ndarray]
    rows: int
    target_rate: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # the model's probabilities with the true outcomes ("probability", "outcome"): what
    # estimated performance is calibrated on; None without an output or target column
    outputs: Any = None
    name: str = "the training data"  # what drift is judged against, for messages

    @property
    def features(self) -> list[Binning]:
        return [b for b in self.binnings if b.kind != "output"]

    @property
    def output(self) -> Binning | None:
        return next((b for b in self.binnings if b.kind == "output"), None)


def build_reference(frame: Any, features: list[dict[str, Any]]) -> Reference:
    """Reference from a DataFrame of training rows and the metadata's feature list."""
    binnings: list[Binning] = []
    for spec in features:
        name, kind = spec["name"], spec.get("kind", "number")
        if name not in frame.columns:
            raise MonitorError(
                f"reference rows have no column '{name}' (declared in metadata.json "
                "'features'); re-run the train stage so reference.parquet matches the model"
            )
        if kind == "category":
            binnings.append(category_binning(name, frame[name], spec.get("values")))
        else:
            binnings.append(number_binning(name, frame[name]))
    if OUTPUT in frame.columns:
        binnings.append(
            number_binning(
                OUTPUT, frame[OUTPUT], kind="output",
                column="CASE WHEN fallback = 0 THEN probability END",
            )
        )
    counts = {
        b.name: np.bincount(b.codes(frame[b.name]), minlength=CODES)
        for b in binnings
    }
    target_rate, outputs = None, None
    if "target" in frame.columns:
        target_rate = float(frame["target"].mean())
        if OUTPUT in frame.columns:
            outputs = frame[[OUTPUT, "target"]].set_axis(["probability", "outcome"], axis=1)
    return Reference(binnings, counts, len(frame), target_rate, outputs=outputs)


def in_period(times: Any, *, start: str | None = "", stop: str | None = "",
              months: list[int] | None = None) -> Any:
    """Mask of the UTC timestamps ``times`` (a Series) in ``[start, stop)`` (dates, either
    may be empty) and in the calendar ``months`` (1..12, all when empty)."""
    import pandas as pd

    keep = times.notna()
    if start:
        keep &= times >= pd.Timestamp(start, tz="UTC")
    if stop:
        keep &= times < pd.Timestamp(stop, tz="UTC")
    if months:
        keep &= times.dt.month.isin(months)
    return keep


def slice_reference(
    ref: Reference, path: Path | str, *, start: str = "", stop: str = "",
    months: list[int] | None = None, shown: str = "",
) -> Reference:
    """``ref`` with its input histograms taken from a slice of the table at ``path``.

    The slice is the rows whose time column (the model contract's) is in
    ``[start, stop)`` and in the calendar ``months`` — e.g. the same months a year
    earlier, or the same season of the training data. The bins stay the training
    reference's (the log is binned with them); the model-output histogram and the
    calibration stay the training reference's (the slice holds no model outputs).
    ``shown`` is how messages name the table (default: ``path``).
    """
    shown = shown or str(path)
    where = "params.yaml monitor.reference_data"
    time_column = ref.metadata.get("time_column")
    if not time_column:
        raise MonitorError(
            f"{where}: a slice is chosen by time, but the model contract names no time "
            "column; set data.time_column (params.yaml) and re-run the train stage, or use "
            "reference: training or rolling")
    if not Path(path).is_file():
        raise MonitorError(f"{where}: {shown}: no such file; point it at a table (CSV or "
                           f"parquet) with the model's features and its time column "
                           f"'{time_column}', e.g. the training split")
    try:
        frame = read_table(path, [time_column])
    except NbpipelineError as exc:
        raise MonitorError(f"{where}: {exc}") from exc
    missing = [b.name for b in ref.features if b.name not in frame.columns]
    if missing:
        raise MonitorError(f"{where}: {shown} has no column(s) {', '.join(missing)}; the "
                           "slice must hold the model's features")
    picked = frame[in_period(frame[time_column], start=start, stop=stop, months=months)]
    what = ", ".join(filter(None, [
        f"from {start}" if start else "", f"to {stop}" if stop else "",
        f"months {', '.join(map(str, months))}" if months else ""]))
    if picked.empty:
        raise MonitorError(f"{where}: no rows of {shown} {what} (column {time_column}); "
                           "widen monitor.reference_from/to or reference_months")
    counts = dict(ref.counts)
    for b in ref.features:
        counts[b.name] = np.bincount(b.codes(picked[b.name]), minlength=CODES)
    return replace(ref, counts=counts, rows=len(picked), name=f"the slice of {shown} {what}")


def load_reference(
    reference_path: Path | str, metadata_path: Path | str | None = None,
    *, metadata: dict[str, Any] | None = None,
) -> Reference:
    """Read reference.parquet + metadata (docs/contracts.md: a file, or a dict) into a Reference."""
    import pandas as pd

    reference_path = Path(reference_path)
    needed = [(reference_path, "reference.parquet")]
    if metadata is None:
        if metadata_path is None:
            raise MonitorError("load_reference needs metadata_path or metadata")
        needed.append((Path(metadata_path), "metadata.json"))
    for path, fix in needed:
        if not path.is_file():
            raise MonitorError(
                f"{path}: not found; the monitor compares live traffic with the model's "
                f"{fix} written by the train stage; run `dvc repro train` or point the "
                "monitor's reference_path/metadata_path (params.yaml `monitor:`) at it"
            )
    if metadata is None:
        try:
            metadata = json.loads(Path(str(metadata_path)).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MonitorError(
                f"{metadata_path}: not JSON ({exc}); re-run the train stage"
            ) from exc
    features = metadata.get("features") if isinstance(metadata, dict) else None
    if not isinstance(features, list) or not features:
        raise MonitorError(
            f"{metadata_path or 'model metadata'}: no 'features' list; re-run the train stage"
        )
    frame = pd.read_parquet(reference_path)
    target = (metadata.get("target") or {}).get("name")
    if target and target in frame.columns and "target" not in frame.columns:
        frame = frame.rename(columns={target: "target"})
    ref = build_reference(frame, features)
    ref.metadata = metadata
    return ref
