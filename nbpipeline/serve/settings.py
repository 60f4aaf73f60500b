"""The server's settings: the ``serve:`` section of params.yaml, checked once at start-up.

Keys (all optional)::

    serve:
      fallback_prediction: 0        # the decision answered while the model is switched off
      fallback_probability: null    # its probability (null: none is claimed)
      decision_threshold: 0.35      # prediction = probability >= threshold; default:
                                    # evaluate.decision_threshold, else 0.5
      poll_seconds: 0.5             # how often the registry is checked for changes
      retry_seconds: 10.0           # how often a failed model load is retried
      max_batch_rows: 1000          # rows per /predict request
      log: true                     # write the prediction log (off only for benchmarks)
      segment_field: ''             # a model factory: the request field naming the segment
                                    # (nbpipeline/serve/segments.py); '' = one model

A model's own ``metadata["decision_threshold"]``, when present, wins over the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nbpipeline.errors import ServeError
from nbpipeline.params import load_params
from nbpipeline.predlog.table import default_log_path
from nbpipeline.project import Project

SECTION = "serve"


@dataclass(frozen=True)
class ServeSettings:
    """How the server decides, logs and reloads."""

    fallback_prediction: int = 0
    fallback_probability: float | None = None
    decision_threshold: float = 0.5
    poll_seconds: float = 0.5
    retry_seconds: float = 10.0
    max_batch_rows: int = 1000
    log: bool = True
    segment_field: str = ""
    log_path: Path | None = None

    def __post_init__(self) -> None:
        if self.fallback_prediction not in (0, 1):
            _bad("fallback_prediction", self.fallback_prediction, "0 or 1")
        if self.fallback_probability is not None and not 0 <= self.fallback_probability <= 1:
            _bad("fallback_probability", self.fallback_probability, "null or a number in [0, 1]")
        if not 0 <= self.decision_threshold <= 1:
            _bad("decision_threshold", self.decision_threshold, "a number in [0, 1]")
        if self.poll_seconds <= 0 or self.retry_seconds <= 0:
            _bad("poll_seconds/retry_seconds", (self.poll_seconds, self.retry_seconds),
                 "positive seconds")
        if self.max_batch_rows < 1:
            _bad("max_batch_rows", self.max_batch_rows, "a positive integer")


def _bad(key: str, value: Any, expected: str) -> None:
    raise ServeError(
        f"params.yaml: serve.{key} is {value!r}; set it to {expected} in the `serve:` section"
    )


_TYPES: dict[str, tuple[type, ...]] = {
    "fallback_prediction": (int,),
    "fallback_probability": (int, float, type(None)),
    "decision_threshold": (int, float),
    "poll_seconds": (int, float),
    "retry_seconds": (int, float),
    "max_batch_rows": (int,),
    "log": (bool,),
    "segment_field": (str,),
}


def settings_from_params(params: Mapping[str, Any], project_root: Path) -> ServeSettings:
    """Build the settings from a loaded params.yaml (unknown keys are errors)."""
    section = params.get(SECTION) or {}
    if not isinstance(section, Mapping):
        raise ServeError("params.yaml: `serve:` must be a mapping of setting: value")
    known = {f.name for f in fields(ServeSettings)} - {"log_path"}
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            raise ServeError(
                f"params.yaml: unknown setting serve.{key}; known: {', '.join(sorted(known))}"
            )
        types = _TYPES[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            _bad(key, value, " or ".join(t.__name__ for t in types))
        values[key] = value
    if "decision_threshold" not in values:
        evaluate = params.get("evaluate") or {}
        threshold = evaluate.get("decision_threshold") if isinstance(evaluate, Mapping) else None
        if isinstance(threshold, int | float) and not isinstance(threshold, bool):
            values["decision_threshold"] = float(threshold)
    return ServeSettings(**values, log_path=default_log_path(project_root))


def load_settings(project: Project) -> ServeSettings:
    """The settings of ``project`` (its params.yaml ``serve:`` section)."""
    return settings_from_params(load_params(project.params_yaml), project.root)
