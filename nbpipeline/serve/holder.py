"""Which models serve now: loading them from the registry and swapping them atomically.

The server keeps one immutable :class:`Snapshot` (champion, canary, fraction, off
switch). A registry change builds a complete new snapshot off the event loop and
replaces the old one in a single assignment, so every request sees either the old or
the new set of models, never a mix. If a model cannot be loaded (missing file, wrong
hash, unloadable), the models that were serving keep serving and the error is kept
for /health; the off switch is always honoured, since it needs no model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nbpipeline.errors import NbpipelineError
from nbpipeline.release.candidate import ModelContract
from nbpipeline.release.registry import ModelVersion, ProductionState, Registry
from nbpipeline.serve.routing import goes_to_canary
from nbpipeline.serve.schema import FeatureSchema
from nbpipeline.serve.scorer import Scorer, compile_scorer

CHECK_ROWS = 5000  # reference rows a compiled scorer must reproduce before it serves

log = logging.getLogger("nbpipeline.serve")


@dataclass(frozen=True)
class ServedModel:
    """A loaded model version and what serving it needs."""

    version: str
    model: Any
    schema: FeatureSchema
    threshold: float
    scorer: Scorer  # rows -> P(positive label), or predicted values; compiled when they agree
    scorer_how: str = "scikit-learn"
    task: str = "classification"  # the model contract's task


@dataclass(frozen=True)
class Snapshot:
    """The production state the server is acting on."""

    champion: ServedModel | None = None
    canary: ServedModel | None = None
    canary_fraction: float = 0.0
    switched_off: bool = False
    off_reason: str | None = None
    token: str | None = None

    @property
    def ready(self) -> bool:
        """Able to answer: a model is loaded, or the off switch gives the answer."""
        return self.switched_off or self.champion is not None

    def route(self, key: str) -> tuple[ServedModel | None, str]:
        """(model, role) for a routing key: 'fallback' when switched off."""
        if self.switched_off:
            return None, "fallback"
        if self.canary is not None and goes_to_canary(key, self.canary_fraction):
            return self.canary, "canary"
        return self.champion, "champion"

    def describe(self) -> dict[str, Any]:
        return {
            "champion": self.champion.version if self.champion else None,
            "canary": self.canary.version if self.canary else None,
            "canary_fraction": self.canary_fraction,
            "switched_off": self.switched_off,
            "off_reason": self.off_reason,
        }


@dataclass
class LoadError:
    """The last failed attempt to serve what the registry says."""

    version: str
    message: str
    role: str = "champion"  # the role the registry gives the version
    at: float = field(default_factory=time.time)


class ModelHolder:
    """Follows the registry; :attr:`snapshot` is what serves now."""

    def __init__(self, registry: Registry, default_threshold: float) -> None:
        self.registry = registry
        self.default_threshold = default_threshold
        self.snapshot = Snapshot()
        self.error: LoadError | None = None
        self.loads = 0
        self.load_failures = 0

    def build(self) -> Snapshot:
        """The snapshot the registry asks for (blocking: reads the registry, loads models)."""
        return self._build(self.registry.state())

    def install(self, snapshot: Snapshot) -> None:
        """Serve ``snapshot`` from now on (one assignment: requests see old or new, whole)."""
        self.snapshot = snapshot

    def _build(self, state: ProductionState) -> Snapshot:
        current = self.snapshot
        wanted = Snapshot(
            canary_fraction=state.canary_fraction, switched_off=state.switched_off,
            off_reason=state.off_reason, token=state.token,
        )
        try:
            champion = self._model(state.champion, current, "champion")
        except _Failed as failed:
            self._failed(failed.error, f"still serving {current.describe()}")
            # Keep the models that were serving; the off switch needs no model, so apply it.
            return replace(current, switched_off=state.switched_off, off_reason=state.off_reason,
                           token=state.token)
        try:
            canary = self._model(state.canary, current, "canary")
        except _Failed as failed:  # the champion takes the canary's traffic meanwhile
            canary = None
            self._failed(failed.error, f"the champion {champion and champion.version} takes "
                         "all traffic")
            wanted = replace(wanted, canary_fraction=0.0)
        else:
            self.error = None
        snap = replace(wanted, champion=champion, canary=canary)
        if snap.describe() != current.describe():
            log.info("serving %s", snap.describe())
        return snap

    def _failed(self, error: LoadError, meanwhile: str) -> None:
        self.error = error
        self.load_failures += 1
        log.error("cannot serve %s %s: %s; %s", error.role, error.version, error.message,
                  meanwhile)

    def _model(self, mv: ModelVersion | None, current: Snapshot, role: str) -> ServedModel | None:
        if mv is None:
            return None
        for served in (current.champion, current.canary):
            if served is not None and served.version == mv.version:
                return served
        try:
            served = self.load_model(mv.version)
        except NbpipelineError as exc:
            raise _Failed(LoadError(mv.version, str(exc), role)) from exc
        except Exception as exc:  # an unexpected failure must not take the server down either
            raise _Failed(LoadError(mv.version, f"{type(exc).__name__}: {exc}", role)) from exc
        self.loads += 1
        return served

    def load_model(self, version: str) -> ServedModel:
        """Load registry ``version`` as it would serve (blocking; raises if it cannot)."""
        model, metadata = self.registry.load(version)
        schema = FeatureSchema.from_metadata(metadata, version=version)
        task = ModelContract.from_metadata(metadata, f"model {version}").task
        scorer, how = compile_scorer(model, schema.names, schema.kinds,
                                     self._reference(version), task)
        log.info("model %s scores with %s", version, how)
        return ServedModel(
            version, model, schema, _threshold(metadata, self.default_threshold), scorer, how,
            task,
        )

    def _reference(self, version: str) -> Any:
        """The version's reference sample (check rows for the compiled scorer), or None."""
        import pandas as pd

        try:
            return pd.read_parquet(self.registry.reference_path(version)).head(CHECK_ROWS)
        except Exception as exc:  # no sample: the scorer is checked on edge rows only
            log.warning("model %s: no reference sample to check its scorer on (%s)", version, exc)
            return None


class _Failed(Exception):
    def __init__(self, error: LoadError) -> None:
        super().__init__(error.message)
        self.error = error


def _threshold(metadata: Mapping[str, Any], default: float) -> float:
    value = metadata.get("decision_threshold")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return default
