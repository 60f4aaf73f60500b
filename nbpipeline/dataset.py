"""Data-stage helpers for any table: read, quarantine bad rows with the reason, split.

Used by the data notebooks (``nbp init``'s and the example's); none of it knows a data set.
The split is by time when the project has a time column (train before ``valid_start``,
valid before ``golden_start``, golden before ``end``), else at random, stratified by the
target for classification, with the seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbpipeline.errors import NbpipelineError

SPLITS = ("train", "valid", "golden")


def read_table(path: str | Path, datetime_columns: Sequence[str] = ()) -> Any:
    """A CSV or parquet file as a DataFrame, with ``datetime_columns`` parsed (as UTC)."""
    import pandas as pd

    source = Path(path)
    if not source.is_file():
        raise NbpipelineError(f"{source}: no such file; set data.source in params.yaml")
    try:
        if source.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(source)
        else:
            frame = pd.read_csv(source, low_memory=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise NbpipelineError(f"{source}: cannot read it as a table ({exc})") from exc
    for column in datetime_columns:
        if column not in frame.columns:
            raise NbpipelineError(f"{source}: no column {column!r} (data.datetime_columns)")
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce")
    return frame


def quarantine(
    frame: Any, *, required: Sequence[str] = (), ranges: Mapping[str, Sequence[Any]] | None = None,
    rules: Mapping[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(clean rows, quarantined rows with a ``reason``): the first rule a row breaks.

    ``required``: columns that must have a value; ``ranges``: column -> [low, high] (either
    may be None); ``rules``: reason -> boolean mask of rows to reject (project-specific).
    """
    import pandas as pd

    masks: dict[str, Any] = {}
    for column in required:
        masks[f"no value in {column}"] = frame[column].isna()
    for column, (low, high) in (ranges or {}).items():
        values = pd.to_numeric(frame[column], errors="coerce")
        if low is not None:
            masks[f"{column} below {low}"] = values < low
        if high is not None:
            masks[f"{column} above {high}"] = values > high
    masks.update(rules or {})
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    for text, mask in masks.items():
        reason = reason.mask(reason.isna() & mask, text)
    bad = reason.notna()
    return frame[~bad].copy(), frame[bad].assign(reason=reason[bad])


def split(
    frame: Any, *, target: str, seed: int, time_column: str | None = None,
    valid_start: str = "", golden_start: str = "", end: str = "",
    valid_fraction: float = 0.2, golden_fraction: float = 0.2, stratify: bool = True,
) -> dict[str, Any]:
    """train / valid / golden, by time (with ``time_column``) or at random."""
    import pandas as pd

    if time_column:
        bounds = [pd.Timestamp(b, tz="UTC") if b else None
                  for b in (valid_start, golden_start, end)]
        if bounds[0] is None or bounds[1] is None:
            raise NbpipelineError(
                "params.yaml data: a time split needs valid_start and golden_start dates")
        ordered = frame.sort_values(time_column, kind="stable")
        t = ordered[time_column]
        before_end = t < bounds[2] if bounds[2] is not None else t.notna()
        return {"train": ordered[t < bounds[0]],
                "valid": ordered[(t >= bounds[0]) & (t < bounds[1])],
                "golden": ordered[(t >= bounds[1]) & before_end]}
    from sklearn.model_selection import train_test_split

    held = valid_fraction + golden_fraction
    if not 0 < held < 1:
        raise NbpipelineError(
            "params.yaml data: valid_fraction + golden_fraction must be between 0 and 1")
    by = frame[target] if stratify else None
    train, rest = train_test_split(frame, test_size=held, random_state=seed, stratify=by)
    by = rest[target] if stratify else None
    valid, golden = train_test_split(rest, test_size=golden_fraction / held,
                                     random_state=seed, stratify=by)
    return {"train": train.sort_index(), "valid": valid.sort_index(),
            "golden": golden.sort_index()}


def sample(splits: Mapping[str, Any], fraction: float, seed: int) -> dict[str, Any]:
    """Each split reduced to ``fraction`` of its rows (order kept)."""
    if fraction >= 1.0:
        return dict(splits)
    return {name: df.sample(frac=fraction, random_state=seed).sort_index()
            for name, df in splits.items()}
