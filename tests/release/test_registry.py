"""The model registry on a real directory: promote, canary, rollback, gate, damage, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from candidates import small_candidate, small_rows

from nbpipeline.errors import GateError, RegistryError
from nbpipeline.release.registry import Registry

PASSED = {"passed": True, "checks": [], "metrics": {"golden": {"roc_auc": 0.9}}}
FAILED = {
    "passed": False,
    "checks": [{"name": "min_metric", "value": 0.5, "threshold": 0.6, "passed": False}],
    "metrics": {"golden": {"roc_auc": 0.5}},
}


@pytest.fixture()
def candidates(tmp_path: Path) -> list[Path]:
    return [small_candidate(tmp_path / f"cand{i}", c=c) for i, c in enumerate((1.0, 0.1, 0.01))]


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def test_empty_registry_has_no_state(reg: Registry) -> None:
    state = reg.state()
    assert state.champion is None and state.canary is None and not state.switched_off
    assert reg.versions() == [] and reg.events() == []
    assert not reg.path.exists()  # created on first write only


def test_refused_commands_leave_nothing_behind(tmp_path: Path) -> None:
    """A command that fails on a registry that does not exist yet creates no folder and no
    empty log; one that fails on an empty log leaves it for the next writer to use."""
    reg = Registry(tmp_path / "models" / "registry")
    for refused in (lambda: reg.rollback(reason="x", actor="ana"),
                    lambda: reg.rollback(role="canary", reason="x", actor="ana"),
                    lambda: reg.promote("v1", canary_fraction=None, reason="x", actor="ana"),
                    lambda: reg.retire(reason="x", actor="ana")):
        with pytest.raises(RegistryError):
            refused()
        assert not (tmp_path / "models").exists()
    reg.append_event("note", reason="first", actor="ana")
    reg.events_path.write_bytes(b"")
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback(reason="x", actor="ana")
    assert reg.append_event("note", reason="after", actor="ana").seq == 1
    assert [e.reason for e in reg.events()] == ["after"]


def test_a_refused_command_racing_a_writer_loses_no_event(tmp_path: Path) -> None:
    """The refused command removes the empty log it made while another writer may have it
    open: that writer must append to the new log, not to the removed file. (Threads: each
    opens the log itself, so their flocks exclude each other as processes' do.)"""
    import threading

    for i in range(60):
        path = tmp_path / f"r{i}" / "registry"
        start = threading.Barrier(2)

        def refused(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            with pytest.raises(RegistryError):
                Registry(path).rollback(reason="x", actor="ana")

        def note(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            Registry(path).append_event("note", reason="kept", actor="bo")

        threads = [threading.Thread(target=refused), threading.Thread(target=note)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [e.reason for e in Registry(path).events()] == ["kept"], i


def test_register_promote_and_load(reg: Registry, candidates: list[Path]) -> None:
    v1 = reg.register(candidates[0], PASSED, force_reason=None, actor="ana")
    assert v1.version == "v1" and v1.metrics == {"golden": {"roc_auc": 0.9}}
    assert reg.object_path(v1.sha256).is_file()
    assert reg.reference_path("v1").is_file()
    event = reg.promote("v1", canary_fraction=None, reason="first model", actor="ana")
    assert (event.seq, event.kind, event.actor) == (2, "promote", "ana")
    assert event.data["version"] == "v1"
    state = reg.state()
    assert state.champion is not None and state.champion.version == "v1"
    model, metadata = reg.load("v1")
    proba = model.predict_proba(small_rows())  # type: ignore[attr-defined]
    assert proba.shape == (5, 2) and metadata["params"] == {"C": 1.0}


def test_same_model_is_not_registered_twice(reg: Registry, candidates: list[Path]) -> None:
    first = reg.register(candidates[0], PASSED, force_reason=None, actor="ana")
    again = reg.register(candidates[0], PASSED, force_reason=None, actor="bo")
    assert again.version == first.version and len(reg.events()) == 1


def test_canary_then_full_promotion_then_rollback(reg: Registry, candidates: list[Path]) -> None:
    for cand in candidates[:2]:
        reg.register(cand, PASSED, force_reason=None, actor="ana")
    reg.promote("v1", canary_fraction=None, reason="first", actor="ana")
    token = reg.state().token
    reg.promote("v2", canary_fraction=0.25, reason="try v2", actor="ana")
    state = reg.state()
    assert state.token != token
    assert state.champion is not None and state.canary is not None
    assert (state.champion.version, state.canary.version, state.canary_fraction) == (
        "v1", "v2", 0.25)
    assert state.role("v2") == "canary"

    reg.rollback(role="canary", reason="canary worse", actor="bo")
    state = reg.state()
    assert state.canary is None and state.canary_fraction == 0.0
    assert state.champion.version == "v1"  # type: ignore[union-attr]

    reg.promote("v2", canary_fraction=None, reason="full", actor="ana")
    assert reg.state().champion.version == "v2"  # type: ignore[union-attr]
    rollback = reg.rollback(reason="latency alarm", actor="monitor")
    assert rollback.data == {"role": "champion", "from": "v2", "to": "v1"}
    assert reg.state().champion.version == "v1"  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback(reason="again", actor="ana")


def test_promote_refusals(reg: Registry, candidates: list[Path]) -> None:
    reg.register(candidates[0], PASSED, force_reason=None, actor="ana")
    with pytest.raises(RegistryError, match="'v9' is not in the registry.*known: v1"):
        reg.promote("v9", canary_fraction=None, reason="x", actor="ana")
    with pytest.raises(RegistryError, match="out of range"):
        reg.promote("v1", canary_fraction=1.5, reason="x", actor="ana")
    reg.promote("v1", canary_fraction=None, reason="x", actor="ana")
    with pytest.raises(RegistryError, match="already the champion"):
        reg.promote("v1", canary_fraction=None, reason="x", actor="ana")
    with pytest.raises(RegistryError, match="canary must be a different version"):
        reg.promote("v1", canary_fraction=0.1, reason="x", actor="ana")
    with pytest.raises(RegistryError, match="no canary"):
        reg.rollback(role="canary", reason="x", actor="ana")


def test_failed_gate_refused_and_forced_promote_recorded(
    reg: Registry, candidates: list[Path]
) -> None:
    with pytest.raises(GateError, match="failed the validation gate.*min_metric.*--force"):
        reg.register(candidates[0], FAILED, force_reason=None, actor="ana")
    assert reg.versions() == []
    with pytest.raises(RegistryError, match="needs a reason"):
        reg.register(candidates[0], FAILED, force_reason="  ", actor="ana")
    forced = reg.register(candidates[0], FAILED, force_reason="hotfix for outage", actor="ana")
    assert forced.forced_reason == "hotfix for outage" and forced.gate == FAILED
    logged = json.loads(reg.events_path.read_text().splitlines()[0])
    assert logged["data"]["forced_reason"] == "hotfix for outage"
    assert logged["reason"] == "forced: hotfix for outage" and logged["actor"] == "ana"


def test_corrupted_model_file_is_refused(reg: Registry, candidates: list[Path]) -> None:
    v1 = reg.register(candidates[0], PASSED, force_reason=None, actor="ana")
    path = reg.object_path(v1.sha256)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(RegistryError) as err:
        reg.load("v1")
    message = str(err.value)
    assert str(path) in message and "damaged" in message and v1.sha256 in message
    path.unlink()
    with pytest.raises(RegistryError, match="missing"):
        reg.load("v1")


def test_candidate_changed_after_training_is_refused(reg: Registry, candidates: list[Path]) -> None:
    with open(candidates[0] / "model.skops", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(RegistryError, match="model changed after training"):
        reg.register(candidates[0], PASSED, force_reason=None, actor="ana")


def test_other_events_do_not_change_state(reg: Registry, candidates: list[Path]) -> None:
    reg.register(candidates[0], PASSED, force_reason=None, actor="ana")
    reg.promote("v1", canary_fraction=None, reason="x", actor="ana")
    reg.append_event("alarm", reason="drift on carrier", actor="monitor", psi=np.float64(0.31),
                     rows=np.int64(12), missing=float("nan"))
    assert reg.events()[-1].data == {"psi": 0.31, "rows": 12, "missing": None}
    assert reg.state().champion.version == "v1"  # type: ignore[union-attr]
    reg.switch_off(reason="quality collapse", actor="monitor")
    state = reg.state()
    assert state.switched_off and state.off_reason == "quality collapse"
    with pytest.raises(RegistryError, match="use Registry.promote"):
        reg.append_event("promote", reason="x", actor="ana")
    reg.switch_on(reason="back on", actor="ana")
    assert not reg.state().switched_off


def test_an_older_log_that_re_promoted_the_champion_has_no_duplicate(
    reg: Registry, candidates: list[Path]
) -> None:
    # issue 16, defect 5: before `nbp on`, the documented way to lift the off switch was
    # promoting the champion again; such a log must not roll back "v1 -> v1"
    reg.register(candidates[0], PASSED, force_reason=None, actor="ana")
    reg.promote("v1", canary_fraction=None, reason="first", actor="ana")
    reg.switch_off(reason="ROI", actor="monitor")
    with open(reg.events_path, "a") as fh:
        fh.write(json.dumps({"seq": 4, "ts": "2026-01-01T00:00:00", "kind": "promote",
                             "actor": "ana", "reason": "back", "data": {
                                 "version": "v1", "role": "champion", "previous": "v1"}}) + "\n")
    state = reg.state()
    assert not state.switched_off and state.previous_champion is None
    with pytest.raises(RegistryError, match=r"no previous champion to roll back to \(v1 is"):
        reg.rollback(reason="x", actor="ana")


def test_torn_last_line_is_ignored_and_repaired(reg: Registry, candidates: list[Path]) -> None:
    reg.register(candidates[0], PASSED, force_reason=None, actor="ana")
    with open(reg.events_path, "ab") as fh:
        fh.write(b'{"seq": 2, "ts": "cut sho')  # a crash in the middle of a write
    assert len(reg.events()) == 1
    event = reg.promote("v1", canary_fraction=None, reason="x", actor="ana")
    assert event.seq == 2 and [e.seq for e in reg.events()] == [1, 2]


def test_hand_edited_log_is_reported(reg: Registry, candidates: list[Path]) -> None:
    reg.register(candidates[0], PASSED, force_reason=None, actor="ana")
    with open(reg.events_path, "ab") as fh:
        fh.write(b"not json\n")
    with pytest.raises(RegistryError, match=r"events.jsonl: line 2 is not a valid event"):
        reg.state()


def _promote_many(registry: str, candidate: str, rounds: int) -> None:
    reg = Registry(registry)
    version = reg.register(candidate, PASSED, force_reason=None, actor=candidate).version
    for i in range(rounds):
        reg.promote(version, canary_fraction=0.1 + i / 100, reason=f"round {i}", actor=candidate)
        reg.append_event("note", reason=f"round {i}", actor=candidate)


def test_concurrent_promotes_from_two_processes(reg: Registry, candidates: list[Path]) -> None:
    ctx = multiprocessing.get_context("fork")
    rounds = 40
    procs = [
        ctx.Process(target=_promote_many, args=(str(reg.path), str(cand), rounds))
        for cand in candidates[:2]
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    events = reg.events()
    assert [e.seq for e in events] == list(range(1, 2 + 4 * rounds + 1))
    assert sorted(v.version for v in reg.versions()) == ["v1", "v2"]
    assert sum(e.kind == "promote" for e in events) == 2 * rounds
    lines = reg.events_path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert reg.state().canary is not None


def test_fuzzed_events_files_are_read_or_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, candidates: list[Path],
) -> None:
    """A real log (register, promote, canary, switch off/on, rollback, alarm) with one line
    replaced, dropped, repeated or edited — fields removed, retyped or set to odd values.
    Reading it (state, versions, `nbp models`, `nbp lineage`) gives the state or one
    RegistryError line naming events.jsonl; never a traceback, never a half-replayed state
    (issue 16)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from nbpipeline.release.lineage import render, trace
    from nbpipeline.release.promote import models_table

    source = Registry(tmp_path_factory.mktemp("fuzz") / "registry")
    for cand in candidates[:2]:
        source.register(cand, PASSED, force_reason=None, actor="ana")
    source.promote("v1", canary_fraction=None, reason="first", actor="ana")
    source.promote("v2", canary_fraction=0.2, reason="try", actor="ana")
    source.switch_off(reason="roi", actor="monitor")
    source.switch_on(reason="fixed", actor="ana")
    source.promote("v2", canary_fraction=None, reason="full", actor="ana")
    source.append_event("alarm", reason="drift", actor="monitor", psi=0.3)
    source.rollback(reason="worse", actor="ana")
    lines = [json.loads(line) for line in source.events_path.read_text().splitlines()]
    for record in lines[:2]:  # what a pipeline's registration records (small_candidate's lacks)
        record["data"]["metadata"]["data"] = {"train": {
            "path": "data/train.parquet", "sha256": "ab" * 32, "rows": 10}}
        record["data"]["lineage"] = {"stages": {"data": {"cmd": "nbp run data", "params": {
            "data": {"n": 1}}, "outs": [{"path": "data/train.parquet", "md5": "x"}]}},
            "git": {"rev": "abc", "dirty": False}, "stale": []}
    odd = (st.none() | st.booleans() | st.integers(-1, 3) | st.floats() | st.text(max_size=5)
           | st.sampled_from(["v1", "v2", "v9", "V1", "v01", "champion", "canary", "x" * 64,
                              "../../x", "0" * 64]) | st.lists(st.integers(), max_size=2))
    # nested metadata/metrics/lineage/gate/files: the keys the readers look for, odd leaves
    names = st.sampled_from(["golden", "valid", "git", "rev", "data", "sha256", "search",
                             "best_params", "params", "passed", "roc_auc", "r2", "checks"])
    nested = st.dictionaries(names, odd | st.dictionaries(names, odd | st.dictionaries(
        names, odd, max_size=2), min_size=1, max_size=2), min_size=1, max_size=3)
    kinds = st.sampled_from(["register", "promote", "rollback", "switch_off", "switch_on",
                             "retire", "alarm"])

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        records = [json.loads(json.dumps(r)) for r in lines]
        raw: str | None = None
        for _ in range(data.draw(st.integers(1, 3))):
            raw = _edit(data, records, data.draw(st.integers(0, len(records) - 1)), kinds,
                        odd | nested) or raw
        text = [json.dumps(r) for r in records]
        if raw is not None:
            text[0] = raw
        reg = Registry(tmp_path_factory.mktemp("fuzz") / "registry")
        reg.path.mkdir()
        shutil.copytree(source.objects, reg.objects)
        reg.events_path.write_text("\n".join(text) + "\n", errors="surrogateescape")
        try:
            reg.state()
            models_table(reg)
            for mv in reg.versions():
                render(trace(reg, mv.version))
        except RegistryError as exc:
            assert "\n" not in str(exc) and str(reg.events_path) in str(exc), str(exc)

    check()


def _paths(record: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path inside ``record`` (mappings only), e.g. ('data', 'lineage', 'git')."""
    if not isinstance(record, dict):
        return []
    return [p for k, v in record.items() for p in [(*prefix, k), *_paths(v, (*prefix, k))]]


def _edit(data: Any, records: list[dict[str, Any]], at: int, kinds: Any,
          odd: Any) -> str | None:
    """Apply one drawn edit to ``records[at]``: a field anywhere in it (the real metadata
    too) removed or set to an odd value, a line dropped or repeated; or a raw line."""
    from hypothesis import strategies as st

    edit = data.draw(st.sampled_from(["path", "path", "path", "kind", "drop", "repeat",
                                      "raw"]))
    if edit == "path":
        *parents, last = data.draw(st.sampled_from(_paths(records[at])))
        node = records[at]
        for key in parents:
            node = node[key]
        if data.draw(st.booleans()):
            node.pop(last)
        else:
            node[last] = data.draw(odd)
    elif edit == "kind":
        records[at]["kind"] = data.draw(kinds)
    elif edit == "drop":
        records.pop(at)
    elif edit == "repeat":
        records.insert(at, records[at])
    else:
        return str(data.draw(st.sampled_from(["[]", "1", "null", '"x"', "{", "\x00", "{}",
                                              '{"seq": 1e400}', "\udcff"])))
    return None


def test_lineage_of_a_hand_edited_record_with_odd_types_renders(candidates: list[Path]) -> None:
    """Found by the fuzz test above: `stale: true` or a check named by a number made
    `nbp lineage` a TypeError traceback."""
    from nbpipeline.release.lineage import render, trace

    reg = Registry(candidates[0].parent / "registry")
    reg.register(candidates[0], {**PASSED, "passed": False,
                                 "checks": [{"name": 3, "passed": False}]},
                 force_reason="test", actor="ana",
                 lineage={"stale": ["data/x.parquet", 7], "stages": {
                     "data": {"cmd": "nbp run data", "outs": [{"path": 5, "md5": "m"}]}}})
    text = render(trace(reg, "v1"))
    assert "FAILED (3)" in text and "data/x.parquet, 7" in text and ": 5" in text
