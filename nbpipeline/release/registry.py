"""The model registry: versions, champion and canary, and every change as an event.

Layout of a registry directory (``project.registry``, default ``<root>/registry``)::

    events.jsonl                   append-only log, one JSON object per line; written
                                   under an exclusive ``fcntl.flock`` and fsync'd
    objects/<sha256>.skops         model files, content-addressed (the name is the hash)
    objects/<sha256>.<ext>         other stored files (reference sample, reports)

Nothing is ever rewritten: the production state (champion, canary, off switch) is
derived by replaying the events, so a state is always explained by its history.
Event kinds with a meaning for the state: ``register``, ``promote``, ``rollback``,
``switch_off``, ``switch_on``, ``retire``. Any other kind (alarms, retrain triggers, the
monitor's ``ab_verdict`` with the figures behind a canary it promoted or rolled back) is
kept and shown but does not change the state. Each line is checked against the fields
its kind needs (``EVENT_FIELDS``) when the log is read: a hand-edited log is refused
with the line that is wrong, never half-replayed.

Models are stored in the skops format and loaded only with the trusted types recorded
in their metadata (never plain pickle), after their sha256 has been checked; a version
whose stored file is missing or damaged is never made champion or canary.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from nbpipeline.errors import GateError, RegistryError
from nbpipeline.project import write_bytes_atomic
from nbpipeline.record import json_value
from nbpipeline.release.candidate import (
    MODEL_FILE,
    REFERENCE_FILE,
    ModelContract,
    check_hash,
    read_metadata,
)

__all__ = [
    "AB_VERDICT",
    "ACTOR_ENV",
    "Event",
    "ModelVersion",
    "ProductionState",
    "Registry",
    "default_actor",
    "segment_registries",
]

ACTOR_ENV = "NBP_ACTOR"
EVENTS_FILE = "events.jsonl"
OBJECTS_DIR = "objects"
ROLES = ("champion", "canary")
STATE_KINDS = ("register", "promote", "rollback", "retire", "switch_off", "switch_on")
AB_VERDICT = "ab_verdict"  # the monitor's A/B figures behind the promote/rollback event_seq
# The fields each state-changing (or ab_verdict) event needs in ``data`` (name -> types).
EVENT_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "register": {"version": (str,), "sha256": (str,)},
    "promote": {"version": (str,), "role": (str,)},
    "rollback": {"role": (str,)},
    AB_VERDICT: {"verdict": (str,), "canary": (str,), "champion": (str,), "metric": (str,),
                 "figures": (dict,), "event_seq": (int,)},
}
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "metadata": (dict,), "metrics": (dict,), "gate": (dict, type(None)), "lineage": (dict,),
    "files": (dict,), "forced_reason": (str, type(None)), "canary_fraction": (int, float),
}


_INTACT_FIX = ("restore the file from a backup (objects/ is content-addressed: any copy with "
               "that sha256 will do), or pick a version whose file is intact (see `nbp models`)")


def default_actor() -> str:
    """Who acts: ``$NBP_ACTOR``, else the OS user name."""
    actor = os.environ.get(ACTOR_ENV)
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Event:
    """One line of ``events.jsonl``."""

    seq: int
    ts: str
    kind: str
    actor: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        record = {
            "seq": self.seq, "ts": self.ts, "kind": self.kind, "actor": self.actor,
            "reason": self.reason, "data": self.data,
        }
        return json.dumps(record, sort_keys=True, separators=(",", ":"))


def _event(rec: Any) -> Event:
    """An Event from one parsed line; ValueError/KeyError/TypeError saying what is wrong."""
    if not isinstance(rec, dict):
        raise TypeError(f"a JSON object was expected, found {type(rec).__name__}")
    data = rec.get("data") or {}
    if not isinstance(data, dict):
        raise TypeError(f"'data' must be an object, found {type(data).__name__}")
    seq = rec["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"'seq' must be a positive integer, found {seq!r}")
    text = {name: rec[name] for name in ("ts", "kind", "actor", "reason")}
    for name, value in text.items():
        if not isinstance(value, str):
            raise TypeError(f"'{name}' must be a string, found {type(value).__name__}")
    kind = text["kind"]
    for name, types in {**EVENT_FIELDS.get(kind, {})}.items():
        if not isinstance(data.get(name), types):
            raise ValueError(f"a {kind} event needs data.{name} "
                             f"({' or '.join(t.__name__ for t in types)})")
    if kind in EVENT_FIELDS:
        for name, types in OPTIONAL_FIELDS.items():
            if name in data and not isinstance(data[name], types):
                raise ValueError(f"data.{name} of a {kind} event must be "
                                 f"{' or '.join(t.__name__ for t in types)}")
    if kind == "register" and not re.fullmatch(r"v[1-9][0-9]*", data["version"]):
        raise ValueError(f"version {data['version']!r} is not v<number>")
    if kind == "register" and not re.fullmatch(r"[0-9a-f]{64}", data["sha256"]):
        raise ValueError(f"sha256 {data['sha256']!r} is not 64 hex digits")
    if kind == "register" and not all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
                                      for v in data.get("files", {}).values()):
        raise ValueError("data.files must map names to sha256 hashes (64 hex digits)")
    if kind in ("promote", "rollback") and data["role"] not in ROLES:
        raise ValueError(f"role {data['role']!r} is not one of {', '.join(ROLES)}")
    if kind == "promote" and data["role"] == "canary":
        fraction = data.get("canary_fraction")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                0 < fraction < 1):
            raise ValueError(f"canary_fraction {fraction!r} is not between 0 and 1")
    return Event(seq, text["ts"], kind, text["actor"], text["reason"], data)


@dataclass(frozen=True)
class ModelVersion:
    """A registered model: its stored file, where it came from and why it was admitted."""

    version: str
    sha256: str
    created: str
    actor: str
    reason: str
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    gate: dict[str, Any] | None
    forced_reason: str | None
    lineage: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 of stored extras

    @property
    def number(self) -> int:
        """The version's position (``v3`` -> 3)."""
        return int(self.version[1:])


@dataclass(frozen=True)
class ProductionState:
    """What should be serving now, derived from the events."""

    champion: ModelVersion | None
    canary: ModelVersion | None
    canary_fraction: float
    switched_off: bool
    off_reason: str | None
    token: str
    previous_champion: ModelVersion | None = None
    last_event: Event | None = None

    def role(self, version: str) -> str | None:
        """'champion', 'canary' or None for ``version``."""
        if self.champion is not None and self.champion.version == version:
            return "champion"
        if self.canary is not None and self.canary.version == version:
            return "canary"
        return None


@dataclass
class _Replay:
    """Mutable state while replaying events (one place that gives events their meaning)."""

    versions: dict[str, ModelVersion] = field(default_factory=dict)
    by_sha: dict[str, str] = field(default_factory=dict)
    champions: list[str] = field(default_factory=list)  # stack; last = current champion
    canary: str | None = None
    canary_fraction: float = 0.0
    switched_off: bool = False
    off_reason: str | None = None

    def apply(self, event: Event) -> None:
        data = event.data
        if event.kind == "register":
            mv = ModelVersion(
                version=data["version"], sha256=data["sha256"], created=event.ts,
                actor=event.actor, reason=event.reason, metadata=data.get("metadata", {}),
                metrics=data.get("metrics", {}), gate=data.get("gate"),
                forced_reason=data.get("forced_reason"), lineage=data.get("lineage", {}),
                files=data.get("files", {}),
            )
            self.versions[mv.version] = mv
            self.by_sha.setdefault(mv.sha256, mv.version)
        elif event.kind == "promote":
            version = data["version"]
            if data.get("role") == "canary":
                self.canary, self.canary_fraction = version, float(data["canary_fraction"])
            elif self.champion != version:  # (an older log may re-promote the champion
                self.champions.append(version)  # to lift the off switch: not a new entry)
                self.canary, self.canary_fraction = None, 0.0
            self.switched_off, self.off_reason = False, None
        elif event.kind == "rollback":
            if data.get("role") == "canary":
                self.canary, self.canary_fraction = None, 0.0
            elif self.champions:  # (validated under the lock; a no-op in a hand-made log)
                self.champions.pop()
                if self.canary is not None and self.champions and self.canary == self.champions[-1]:
                    self.canary, self.canary_fraction = None, 0.0
                self.switched_off, self.off_reason = False, None
        elif event.kind == "switch_off":
            self.switched_off, self.off_reason = True, event.reason
        elif event.kind == "switch_on":
            self.switched_off, self.off_reason = False, None
        elif event.kind == "retire":  # a new model line starts: no champion, no rollback
            self.champions.clear()
            self.canary, self.canary_fraction = None, 0.0
            self.switched_off, self.off_reason = False, None

    @property
    def champion(self) -> str | None:
        return self.champions[-1] if self.champions else None

    @property
    def previous_champion(self) -> str | None:
        return self.champions[-2] if len(self.champions) > 1 else None


class Registry:
    """A registry directory; created on first write. Safe for concurrent processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._cache_key: tuple[int, int] | None = None
        self._cache: list[Event] = []

    # ---------------------------------------------------------------- paths
    @property
    def events_path(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def objects(self) -> Path:
        return self.path / OBJECTS_DIR

    def object_path(self, sha256: str, ext: str = "skops") -> Path:
        """Where the stored file with this hash lives."""
        return self.objects / f"{sha256}.{ext}"

    # ---------------------------------------------------------------- reading
    def events(self) -> list[Event]:
        """Every event, oldest first."""
        try:
            st = self.events_path.stat()
        except FileNotFoundError:
            return []
        key = (st.st_size, st.st_mtime_ns)
        if key != self._cache_key:
            with open(self.events_path, "rb") as fh:
                self._cache = self._parse(fh.read())
            self._cache_key = key
        return list(self._cache)

    def _parse(self, raw: bytes) -> list[Event]:
        events: list[Event] = []
        lines = raw.split(b"\n")
        # A last line without "\n" is a write cut short by a crash: not yet an event.
        for number, line in enumerate(lines[:-1], start=1):
            if not line.strip():
                continue
            try:
                event = _event(json.loads(line))
                if events and event.seq <= events[-1].seq:
                    raise ValueError(f"seq {event.seq} after seq {events[-1].seq}")
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise self.hand_edited(f"line {number} is not a valid event "
                                       f"({type(exc).__name__}: {exc})") from exc
            events.append(event)
        return events

    def hand_edited(self, problem: str) -> RegistryError:
        """The one error for a log that registration and promotion did not write."""
        return RegistryError(f"{self.events_path}: {problem}; the registry log was edited by "
                             "hand — restore it from a backup (it is append-only, never edit it)")

    def _replay(self, events: list[Event] | None = None) -> _Replay:
        replay = _Replay()
        for event in self.events() if events is None else events:
            version = event.data.get("version")
            if event.kind == "promote" and version not in replay.versions:
                raise self.hand_edited(f"event seq {event.seq} promotes {version!r}, which no "
                                       "earlier event registered")
            replay.apply(event)
        return replay

    def token(self) -> str:
        """Changes whenever an event is appended (size + mtime of the log); cheap to poll."""
        try:
            st = self.events_path.stat()
        except FileNotFoundError:
            return "empty"
        return f"{st.st_size}-{st.st_mtime_ns}"

    def versions(self) -> list[ModelVersion]:
        """All registered versions, oldest first."""
        return list(self._replay().versions.values())

    def get(self, version: str) -> ModelVersion:
        """The registered ``version``; RegistryError if unknown."""
        found = self._replay().versions.get(version)
        if found is None:
            raise RegistryError(self._unknown(version, self._replay()))
        return found

    def state(self) -> ProductionState:
        """The production state now (champion, canary, off switch) and a change token."""
        token = self.token()
        events = self.events()
        replay = self._replay(events)
        pick = replay.versions.get
        return ProductionState(
            champion=pick(replay.champion) if replay.champion else None,
            canary=pick(replay.canary) if replay.canary else None,
            canary_fraction=replay.canary_fraction if replay.canary else 0.0,
            switched_off=replay.switched_off,
            off_reason=replay.off_reason,
            token=token,
            previous_champion=pick(replay.previous_champion) if replay.previous_champion else None,
            last_event=events[-1] if events else None,
        )

    def model_bytes(self, version: str, *, fix: str | None = None) -> bytes:
        """The stored model file of ``version``, its sha256 checked; RegistryError naming the
        file and ``fix`` when it is missing or damaged."""
        mv = self.get(version)
        path = self.object_path(mv.sha256)
        fix = fix or ("restore the file from a backup, or roll back (`nbp rollback`) to a "
                      "version whose file is intact")
        try:
            blob = path.read_bytes()
        except FileNotFoundError as exc:
            raise RegistryError(
                f"{path}: model file of {version} is missing; refusing to use it — {fix}"
            ) from exc
        check_hash(path, blob, mv.sha256, RegistryError, what=f"model file of {version}",
                   fix=fix)
        return blob

    def damage(self, version: str) -> str | None:
        """None if the stored model file of ``version`` is intact, else what is wrong
        ('missing' or 'damaged'), for listings."""
        if not self.object_path(self.get(version).sha256).is_file():
            return "missing"
        try:
            self.model_bytes(version)
        except RegistryError:
            return "damaged"
        return None

    def load(self, version: str) -> tuple[object, dict[str, Any]]:
        """The fitted model of ``version`` and its metadata, after checking the file's hash."""
        import skops.io as sio

        mv = self.get(version)
        path = self.object_path(mv.sha256)
        blob = self.model_bytes(version)
        trusted = list(mv.metadata.get("trusted_types", []))
        try:
            model = sio.loads(blob, trusted=trusted)
        except Exception as exc:  # skops raises several types for unsafe/unknown content
            raise RegistryError(
                f"{path}: cannot load model {version} with its recorded trusted types "
                f"({type(exc).__name__}: {exc}); the model needs types not listed in its "
                "metadata 'trusted_types' — re-train and register it again"
            ) from exc
        return model, dict(mv.metadata)

    def contract(self, version: str) -> ModelContract:
        """The model contract of ``version`` (what it takes and predicts)."""
        return ModelContract.from_metadata(dict(self.get(version).metadata),
                                           f"registry version {version}")

    def stored_file(self, version: str, name: str) -> Path:
        """Path of an extra file stored with ``version`` (e.g. 'reference.parquet')."""
        mv = self.get(version)
        sha = mv.files.get(name)
        if sha is None:
            raise RegistryError(
                f"model {version} has no stored file '{name}' (it has: "
                f"{', '.join(sorted(mv.files)) or 'none'})"
            )
        return self.object_path(sha, Path(name).suffix.lstrip(".") or "bin")

    def reference_path(self, version: str) -> Path:
        """The reference sample (training rows + model output) stored with ``version``."""
        return self.stored_file(version, "reference.parquet")

    # ---------------------------------------------------------------- writing
    @contextmanager
    def _locked(self) -> Iterator[tuple[IO[bytes], list[Event]]]:
        """Hold the exclusive lock on the log; yield the open log and its events.

        A command refused with the log still empty leaves nothing behind: the empty log and
        the folders made for it are removed (a writer waiting on the removed file sees it is
        no longer the log, and opens the new one)."""
        made = [p for p in (self.path, *self.path.parents) if not p.exists()][::-1]
        with self._open_log() as fh:
            try:
                fh.seek(0)
                raw = fh.read()
                if raw and not raw.endswith(b"\n"):
                    # drop a line cut short by a crash; it never became an event
                    os.ftruncate(fh.fileno(), raw.rfind(b"\n") + 1)
                    raw = raw[: raw.rfind(b"\n") + 1]
                yield fh, self._parse(raw)
            except BaseException:
                if os.fstat(fh.fileno()).st_size == 0:
                    self.events_path.unlink()
                    for folder in reversed(made):
                        try:
                            folder.rmdir()
                        except OSError:  # not empty: someone else's files arrived meanwhile
                            break
                raise
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _open_log(self) -> IO[bytes]:
        """The log, open for appending and exclusively locked. A file opened just before a
        refused command removed it is not the log any more: open again."""
        for _attempt in range(1000):
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                fh = open(self.events_path, "a+b")
            except (FileNotFoundError, FileExistsError):
                # a refused command removed a folder meanwhile (mkdir then sees it vanish)
                if self.path.exists() and not self.path.is_dir():
                    raise RegistryError(f"{self.path} is a file, not the registry's folder; "
                                        "move it away") from None
                continue
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), self.events_path.stat())
            except FileNotFoundError:
                same = False
            if same:
                return fh
            fh.close()
        raise RegistryError(f"{self.events_path}: the registry's folder kept vanishing while "
                            "opening its log; retry the command")

    @staticmethod
    def _append(fh: IO[bytes], events: list[Event], kind: str, actor: str, reason: str,
                data: Mapping[str, Any]) -> Event:
        seq = events[-1].seq + 1 if events else 1
        plain = json_value(dict(data))  # numpy scalars -> numbers, NaN -> null
        event = Event(seq, _now(), kind, actor, reason, json.loads(json.dumps(plain)))
        fh.seek(0, os.SEEK_END)
        fh.write((event.to_json() + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
        return event

    def _store(self, data: bytes, ext: str) -> str:
        sha = _sha256(data)
        target = self.object_path(sha, ext)
        if not (target.is_file() and _sha256(target.read_bytes()) == sha):
            write_bytes_atomic(target, data)
        return sha

    def register(
        self,
        candidate_dir: Path | str,
        gate: dict[str, Any] | None,
        *,
        force_reason: str | None,
        actor: str,
        reason: str = "",
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        extra_files: Mapping[str, Path | str] | None = None,
    ) -> ModelVersion:
        """Store the candidate's model and record it as a new version.

        Refused (GateError) when ``gate`` says the candidate failed, unless
        ``force_reason`` explains why it is admitted anyway (recorded). A model whose
        file is already registered is not stored twice: its existing version is returned.
        ``metrics`` defaults to ``gate["metrics"]``. ``extra_files`` (name -> path) are
        stored content-addressed too; ``reference.parquet`` of the candidate always is.
        """
        directory = Path(candidate_dir)
        model_path = directory / MODEL_FILE
        candidate = read_metadata(directory, RegistryError)
        if candidate.trusted_types is None:
            raise RegistryError(
                f"{directory}: metadata has no 'trusted_types'; the model cannot be loaded "
                "safely — re-run `dvc repro train` with the current nbpipeline"
            )
        metadata = candidate.raw
        blob = model_path.read_bytes()
        sha = check_hash(model_path, blob, candidate.model_sha256, RegistryError,
                         fix="the model changed after training: re-run `dvc repro`")
        if force_reason is not None and not force_reason.strip():
            raise RegistryError("a forced registration needs a reason: pass --reason TEXT")
        if gate is not None and not gate.get("passed", False) and not force_reason:
            failed = [c.get("name", "?") for c in gate.get("checks", []) if not c.get("passed")]
            raise GateError(
                f"candidate {directory} failed the validation gate "
                f"(failed checks: {', '.join(failed) or 'unknown'}); improve the model and "
                "re-run `dvc repro`, or override with --force --reason TEXT (recorded)"
            )
        files = {}
        extras = {REFERENCE_FILE: directory / REFERENCE_FILE, **(extra_files or {})}
        for name, path in extras.items():
            if Path(path).is_file():
                ext = Path(name).suffix.lstrip(".") or "bin"
                files[name] = self._store(Path(path).read_bytes(), ext)
        self._store(blob, "skops")
        with self._locked() as (fh, events):
            replay = self._replay(events)
            existing = replay.by_sha.get(sha)
            if existing is not None:
                return replay.versions[existing]
            version = f"v{len(replay.versions) + 1}"
            data = {
                "version": version, "sha256": sha, "metadata": metadata,
                "metrics": metrics if metrics is not None else (gate or {}).get("metrics", {}),
                "gate": gate, "forced_reason": force_reason, "lineage": lineage or {},
                "files": files,
            }
            why = reason or (f"forced: {force_reason}" if force_reason else "gate passed"
                             if gate else "registered without a gate")
            self._append(fh, events, "register", actor, why, data)
            replay = self._replay(self._parse_log(fh))
        return replay.versions[version]

    def _parse_log(self, fh: IO[bytes]) -> list[Event]:
        fh.seek(0)
        return self._parse(fh.read())

    def promote(
        self, version: str, *, canary_fraction: float | None, reason: str, actor: str
    ) -> Event:
        """Make ``version`` the champion (clears the canary), or the canary with a fraction."""
        if canary_fraction is not None and not 0.0 < canary_fraction < 1.0:
            raise RegistryError(
                f"canary fraction {canary_fraction} is out of range; give a share of traffic "
                "between 0 and 1 (exclusive), e.g. --canary 0.1"
            )
        with self._locked() as (fh, events):
            replay = self._replay(events)
            if version not in replay.versions:
                raise RegistryError(self._unknown(version, replay))
            if canary_fraction is None:
                if replay.champion == version:
                    raise RegistryError(
                        f"{version} is already the champion; "
                        + ("it is switched off: lift the off switch with `nbp on --reason TEXT`"
                           if replay.switched_off else "nothing to promote")
                    )
                data: dict[str, Any] = {"version": version, "role": "champion",
                                        "previous": replay.champion}
            else:
                if replay.champion == version:
                    raise RegistryError(
                        f"{version} is the champion; a canary must be a different version"
                    )
                data = {"version": version, "role": "canary", "canary_fraction": canary_fraction,
                        "champion": replay.champion}
            self.model_bytes(version, fix=_INTACT_FIX)
            return self._append(fh, events, "promote", actor, reason, data)

    def rollback(self, *, role: str = "champion", reason: str, actor: str) -> Event:
        """'champion': the previous champion serves again; 'canary': the canary is removed."""
        if role not in ROLES:
            raise RegistryError(f"cannot roll back role '{role}'; use 'champion' or 'canary'")
        with self._locked() as (fh, events):
            replay = self._replay(events)
            if role == "canary":
                if replay.canary is None:
                    raise RegistryError("there is no canary to roll back")
                data: dict[str, Any] = {"role": "canary", "from": replay.canary, "to": None}
            else:
                if replay.previous_champion is None:
                    raise RegistryError(
                        "no previous champion to roll back to"
                        + (f" ({replay.champion} is the first)" if replay.champion else "")
                        + "; to stop serving use the off switch instead"
                    )
                data = {"role": "champion", "from": replay.champion,
                        "to": replay.previous_champion}
                self.model_bytes(replay.previous_champion, fix=_INTACT_FIX)
            return self._append(fh, events, "rollback", actor, reason, data)

    def switch_off(self, *, reason: str, actor: str) -> Event:
        """Stop serving models: the server answers its fallback decision until
        :meth:`switch_on`, a promote or a rollback."""
        if not reason.strip():
            raise RegistryError("switching the model off needs a reason: pass --reason TEXT")
        with self._locked() as (fh, events):
            replay = self._replay(events)
            if replay.switched_off:
                raise RegistryError(f"serving is already switched off ({replay.off_reason}); "
                                    "`nbp on --reason TEXT` lifts the off switch")
            return self._append(fh, events, "switch_off", actor, reason,
                                {"champion": replay.champion, "canary": replay.canary})

    def switch_on(self, *, reason: str, actor: str) -> Event:
        """Lift the off switch: the champion (and canary) serve again; the rollback stack is
        unchanged. Refused when the switch is not on or the champion's file is damaged."""
        if not reason.strip():
            raise RegistryError("lifting the off switch needs a reason: pass --reason TEXT")
        with self._locked() as (fh, events):
            replay = self._replay(events)
            if not replay.switched_off:
                raise RegistryError("serving is not switched off; nothing to switch on")
            for version in (replay.champion, replay.canary):
                if version is not None:
                    self.model_bytes(version, fix=_INTACT_FIX)
            return self._append(fh, events, "switch_on", actor, reason,
                                {"champion": replay.champion, "canary": replay.canary})

    def retire(self, *, reason: str, actor: str) -> Event:
        """Retire the champion (and canary): the next promoted model starts a new model
        line, e.g. with other features or another task. Versions stay registered."""
        if not reason.strip():
            raise RegistryError("retiring the champion needs a reason: pass --reason TEXT")
        with self._locked() as (fh, events):
            replay = self._replay(events)
            if replay.champion is None and replay.canary is None:
                raise RegistryError("there is no champion or canary to retire")
            data = {"retired": list(replay.champions), "canary": replay.canary}
            return self._append(fh, events, "retire", actor, reason, data)

    def append_event(self, kind: str, *, reason: str, actor: str, **data: Any) -> Event:
        """Record any other event (alarm, retrain trigger, note); it does not change the state."""
        if kind in STATE_KINDS:
            raise RegistryError(
                f"event kind '{kind}' changes the state; use Registry.{kind}() instead"
            )
        with self._locked() as (fh, events):
            return self._append(fh, events, kind, actor, reason, data)

    @staticmethod
    def _unknown(version: str, replay: _Replay) -> str:
        known = ", ".join(replay.versions) or "none yet"
        return (f"model version '{version}' is not in the registry (known: {known}); "
                "see `nbp models`")


def segment_registries(base: Path) -> list[str]:
    """The segments of a model factory with a registry under ``base`` (``base/<segment>/``
    holding an event log), sorted."""
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if (d / EVENTS_FILE).is_file())
