"""The candidate model: its contract, its folder's files, its metadata schema, the hash check.

A candidate is a directory written by the train stage (``models/candidate`` by default):

    model.skops        the fitted scikit-learn pipeline (skops format, never plain pickle)
    metadata.json      :class:`CandidateMetadata`: the model contract, params, data hashes,
                       git revision, library versions, search results, trusted types
    reference.parquet  a sample of training rows with the model's output (drift reference)

The **model contract** (:class:`ModelContract`) is what every consumer reads: the feature
names with kinds and categories, the target, the positive label, the task and a
description. Serve, monitor, report, replay and the compiled scorer read it from here and
never from a module constant. This module is the one place that spells the file names,
parses metadata.json and checks a model file against its recorded hash.
"""

from __future__ import annotations

import io
import json
import platform
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbpipeline.errors import NbpipelineError
from nbpipeline.project import atomic_path, write_text_atomic
from nbpipeline.record import file_sha256, json_value

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
REFERENCE_FILE = "reference.parquet"
TASKS = ("classification", "regression")
KINDS = ("number", "category")
LIBRARIES = ("scikit-learn", "pandas", "numpy", "skops", "papermill", "dvc", "nbpipeline")
# Every member of a model file gets this time (zip's earliest), so a model has one byte form.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Feature:
    """One model input: a number, or a category with the values seen in training."""

    name: str
    kind: str
    values: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "category":
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True)
class ModelContract:
    """What a model takes and what it predicts."""

    features: tuple[Feature, ...]
    target: str
    task: str = "classification"
    positive_label: Any = 1
    description: str = ""
    time_column: str | None = None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "category"]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "number"]

    def outcome(self, values: Any) -> Any:
        """The target as the model learns it: 1/0 (is the positive label) or a number."""
        if self.task == "regression":
            return values.astype("float64")
        return (values.astype(str) == str(self.positive_label)).astype("int8")

    def differences(self, other: ModelContract) -> list[str]:
        """What differs from ``other``, one phrase each; [] when interchangeable."""
        found = []
        if self.task != other.task:
            found.append(f"task {other.task} -> {self.task}")
        if self.target != other.target:
            found.append(f"target {other.target} -> {self.target}")
        elif str(self.positive_label) != str(other.positive_label) and self.task != "regression":
            found.append(f"positive label {other.positive_label} -> {self.positive_label}")
        mine, theirs = set(self.names), set(other.names)
        if mine - theirs:
            found.append("new feature(s) " + ", ".join(sorted(mine - theirs)))
        if theirs - mine:
            found.append("dropped feature(s) " + ", ".join(sorted(theirs - mine)))
        kinds = {f.name: f.kind for f in other.features}
        changed = sorted(f.name for f in self.features if kinds.get(f.name, f.kind) != f.kind)
        if changed:
            found.append("changed kind of " + ", ".join(changed))
        return found

    def as_metadata(self) -> dict[str, Any]:
        return {
            "features": [f.as_dict() for f in self.features],
            "target": {"name": self.target, "description": self.description,
                       "positive_label": self.positive_label},
            "task": self.task,
            "time_column": self.time_column,
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], where: str = METADATA_FILE) -> ModelContract:
        """Read the contract of a candidate or registered version's metadata."""
        try:
            features = tuple(
                Feature(str(f["name"]), str(f.get("kind", "number")),
                        tuple(str(v) for v in f.get("values", [])))
                for f in metadata["features"]
            )
            target = metadata.get("target") or {}
            task = str(metadata.get("task", "classification"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise NbpipelineError(
                f"{where}: no usable model contract ('features' as a list of {{name, kind}}: "
                f"{exc}); re-run the train stage with the current nbpipeline"
            ) from exc
        if task not in TASKS:
            raise NbpipelineError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")
        return cls(features, str(target.get("name", "")), task,
                   target.get("positive_label", 1), str(target.get("description", "")),
                   metadata.get("time_column"))


def contract_from_params(
    frame: Any, *, features: dict[str, str], target: str, task: str = "classification",
    positive_label: Any = 1, description: str = "", time_column: str | None = None,
) -> ModelContract:
    """The contract of a model trained on ``frame`` with ``features`` (name -> kind, as in
    params.yaml ``common.features``); categories list the values seen in ``frame``."""
    if task not in TASKS:
        raise NbpipelineError(f"common.task: {task!r} is not one of {', '.join(TASKS)}")
    missing = [name for name in [*features, target] if name not in frame.columns]
    if missing:
        raise NbpipelineError(
            f"column(s) {', '.join(missing)} named in params.yaml (common.features / "
            "common.target) are not in the training data; fix the names or the data stage")
    built = []
    for name, kind in features.items():
        if kind not in KINDS:
            raise NbpipelineError(
                f"params.yaml common.features.{name}: kind {kind!r} is not one of "
                f"{', '.join(KINDS)}")
        values = (tuple(sorted(str(v) for v in frame[name].dropna().unique()))
                  if kind == "category" else ())
        built.append(Feature(name, kind, values))
    return ModelContract(tuple(built), target, task, positive_label, description, time_column)


@dataclass(frozen=True)
class CandidateMetadata:
    """metadata.json of a candidate (and of every registered version), typed."""

    contract: ModelContract
    model_sha256: str | None
    trusted_types: tuple[str, ...] | None  # None: not recorded (cannot be loaded safely)
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the whole file, as written

    @classmethod
    def parse(cls, raw: dict[str, Any], where: str = METADATA_FILE) -> CandidateMetadata:
        if not isinstance(raw, dict):
            raise NbpipelineError(f"{where}: not a JSON object; re-run the train stage")
        return cls(
            contract=ModelContract.from_metadata(raw, where),
            model_sha256=raw.get("model_sha256"),
            trusted_types=(tuple(raw["trusted_types"]) if "trusted_types" in raw else None),
            params=dict(raw.get("params") or {}), data=dict(raw.get("data") or {}),
            search=dict(raw.get("search") or {}), versions=dict(raw.get("versions") or {}),
            raw=raw,
        )


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


@contextmanager
def _thread_counts_unset(model: Any) -> Iterator[None]:
    """HistGradientBoosting keeps the OpenMP thread count of its fit in its binner
    (``_bin_mapper.n_threads``), and ``nbp run`` gives a stage a share of the cores that
    depends on what else runs; the count only says how many threads to bin with later, so
    it is saved as None ("all available", what a fresh binner does)."""
    found = [part for part in [model, *_parts(model)] if hasattr(part, "_bin_mapper")]
    saved = [getattr(part._bin_mapper, "n_threads", None) for part in found]
    for part in found:
        part._bin_mapper.n_threads = None
    try:
        yield
    finally:
        for part, n_threads in zip(found, saved, strict=True):
            part._bin_mapper.n_threads = n_threads


def _parts(model: Any) -> list[Any]:
    """The estimators inside a scikit-learn ``model`` (pipeline steps, wrapped models)."""
    try:
        return list(model.get_params(deep=True).values())
    except Exception:  # not a scikit-learn estimator: nothing inside to look at
        return []


def model_bytes(model: Any) -> bytes:
    """``model`` in the skops format, byte-reproducible: the same fitted model gives the same
    bytes in any process, so a re-run of train with the same data, params and seed leaves
    model.skops (and dvc.lock, and every stage after it) unchanged.

    skops names objects and array members by ``id()`` and ``uuid4``, and stamps each zip
    member with the save time; here the ids and member names are renumbered in the order
    the schema first mentions them, every member gets one fixed time, and the thread count
    of a boosting fit is left out. What is loaded is unchanged (same objects, same sharing,
    same trusted types). Measured: one file across processes, hash seeds and 1 or 2
    OpenMP threads (the trees themselves did not depend on the thread count).
    """
    import skops.io as sio

    with _thread_counts_unset(model):
        blob = sio.dumps(model)
    with zipfile.ZipFile(io.BytesIO(blob)) as source:
        members = {info.filename: info for info in source.infolist()}
        schema = json.loads(source.read("schema.json"))
        ids: dict[int, int] = {}
        names: dict[str, str] = {}

        def renumber(node: Any) -> None:
            if isinstance(node, list):
                for item in node:
                    renumber(item)
            elif isinstance(node, dict):
                for key, value in node.items():
                    if key == "__id__" and isinstance(value, int):
                        node[key] = ids.setdefault(value, len(ids))
                    elif key == "file" and isinstance(value, str) and value in members:
                        node[key] = names.setdefault(value, f"{len(names)}{Path(value).suffix}")
                    else:
                        renumber(value)

        renumber(schema)
        # members the schema does not name (none in skops 0.16) keep their names, sorted
        unnamed = sorted(set(members) - set(names) - {"schema.json"})
        renamed = [*names.items(), *((old, old) for old in unnamed)]
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as target:
            def write(name: str, data: bytes, like: zipfile.ZipInfo) -> None:
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.compress_type, info.external_attr = like.compress_type, 0o600 << 16
                info.create_system = 3  # unix, wherever it is written
                target.writestr(info, data)

            write("schema.json", json.dumps(schema, indent=2).encode(), members["schema.json"])
            for old, new in renamed:
                write(new, source.read(old), members[old])
    return out.getvalue()


def save_candidate(
    model: Any, model_dir: str | Path, *, contract: ModelContract, reference: Any,
    params: dict[str, Any], data_paths: dict[str, str], search: dict[str, Any],
) -> dict[str, Any]:
    """Write model.skops, metadata.json and reference.parquet into ``model_dir``."""
    import pyarrow.parquet as pq
    import skops.io as sio

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = model_bytes(model)
    trusted = sorted(sio.get_untrusted_types(data=blob))
    with atomic_path(out / MODEL_FILE) as tmp:
        tmp.write_bytes(blob)
    with atomic_path(out / REFERENCE_FILE) as tmp:
        reference.to_parquet(tmp, index=False)
    # no save time and no git commit: metadata.json is a DVC output and must not change when
    # the model does not (a commit would otherwise change it on the next run of train, and
    # every stage after it); the stage's report records the commit it ran at, the registry
    # the time and commit of registration (nbpipeline.release.lineage)
    metadata = {
        "params": params,
        "data": {
            split: {"path": path, "sha256": file_sha256(path),
                    "rows": int(pq.ParquetFile(path).metadata.num_rows)}
            for split, path in data_paths.items()
        },
        "versions": library_versions(),
        **contract.as_metadata(),
        "search": search,
        "model_sha256": file_sha256(out / MODEL_FILE),
        "trusted_types": trusted,
    }
    write_text_atomic(out / METADATA_FILE, json.dumps(json_value(metadata), indent=2) + "\n")
    return metadata


def read_metadata(
    model_dir: str | Path, error: type[NbpipelineError] = NbpipelineError,
) -> CandidateMetadata:
    """metadata.json of the candidate in ``model_dir``; ``error`` names the file and the fix
    when the model or its metadata is missing or unreadable."""
    directory = Path(model_dir)
    meta_path, model_path = directory / METADATA_FILE, directory / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        raise error(
            f"{directory}: no candidate model ({MODEL_FILE} + {METADATA_FILE}); run the train "
            "stage first (`dvc repro train`)"
        )
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise error(f"{meta_path}: not valid JSON ({exc}); re-run `dvc repro train`") from exc
    try:
        return CandidateMetadata.parse(raw, str(meta_path))
    except NbpipelineError as exc:
        raise error(str(exc)) from exc


def check_hash(
    path: Path, blob: bytes, expected: str | None,
    error: type[NbpipelineError] = NbpipelineError, *, what: str = "the model file",
    fix: str = "re-run `dvc repro train`",
) -> str:
    """The sha256 of ``blob`` (the bytes of ``path``); ``error`` if it is not ``expected``:
    the one check of a model file against its recorded hash."""
    import hashlib

    actual = hashlib.sha256(blob).hexdigest()
    if expected is not None and actual != expected:
        raise error(
            f"{path}: {what} is damaged: sha256 is {actual}, expected {expected} (recorded "
            f"in its metadata); refusing to use it — {fix}"
        )
    return actual


def load_candidate(model_dir: str | Path) -> tuple[Any, CandidateMetadata]:
    """Load a candidate saved by :func:`save_candidate`, checking its hash and types."""
    import skops.io as sio

    metadata = read_metadata(model_dir)
    path = Path(model_dir) / MODEL_FILE
    blob = path.read_bytes()
    check_hash(path, blob, metadata.model_sha256)
    return sio.loads(blob, trusted=list(metadata.trusted_types or ())), metadata
