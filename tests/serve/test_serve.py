"""The model server over real HTTP: a real uvicorn on a free loopback port, a real registry,
a real SQLite prediction log and a small real sklearn model."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from candidates import FEATURES, synthetic_candidate, synthetic_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from serve_fixtures import (
    free_port,
    make_project,
    register,
    running_server,
    sample_row,
    spooled_ids,
    start_server_process,
    wait_for,
    wait_ready,
)

from nbpipeline.errors import ServeError
from nbpipeline.predlog import table as predlog
from nbpipeline.project import Project
from nbpipeline.release.registry import Registry
from nbpipeline.serve import ServeSettings, serve
from nbpipeline.serve.security import TOKEN_ENV, Access
from nbpipeline.serve.settings import settings_from_params

NAMES = [f["name"] for f in FEATURES]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("candidates")
    return {
        "a": synthetic_candidate(base / "a", c=1.0, seed=0),
        "b": synthetic_candidate(base / "b", c=0.05, seed=1),
    }


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "proj")


@pytest.fixture
def registry(project: Project) -> Registry:
    return Registry(project.registry)


@pytest.fixture
def served(project: Project, registry: Registry, candidates: dict[str, Path]) -> Iterator[str]:
    """A server whose champion is candidate 'a' (v1)."""
    register(registry, candidates["a"])
    with running_server(project) as url:
        yield url


def settled(url: str) -> None:
    """Wait until everything the server has answered is in SQLite, not only its spool."""
    wait_for(lambda: serving(url)["log"]["spooled_bytes"] == 0)


def log_rows(
    url: str, project: Project, where: str = "1=1", args: tuple[Any, ...] = ()
) -> list[sqlite3.Row]:
    settled(url)
    conn = predlog.connect(predlog.default_log_path(project.root), readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(f"SELECT * FROM predictions WHERE {where}", args))
    finally:
        conn.close()


def post(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=10, **kwargs)


def serving(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=5).json()


# ---------------------------------------------------------------- predict
def test_single_row_is_answered_and_logged_before_the_response(
    served: str, project: Project
) -> None:
    resp = post(served, sample_row())
    assert resp.status_code == 200
    body = resp.json()
    assert body["model_version"] == "v1" and body["role"] == "champion"
    assert body["fallback"] is False and body["prediction"] in (0, 1)
    assert 0.0 <= body["probability"] <= 1.0
    # Durable when answered: in the spool on disk (or already moved into SQLite).
    conn = predlog.connect(predlog.default_log_path(project.root), readonly=True)
    in_sqlite = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    conn.close()
    spooled = spooled_ids(predlog.default_log_path(project.root))
    assert body["request_id"] in spooled or in_sqlite == 1
    [row] = log_rows(served, project, "request_id = ?", (body["request_id"],))
    assert row["model_version"] == "v1" and row["probability"] == body["probability"]
    assert row["f_carrier"] == "AA" and row["f_hour"] == 17.0 and row["latency_ms"] > 0
    assert row["features"] == "{}"  # every feature has its typed column: stored once
    conn = predlog.connect(predlog.default_log_path(project.root), readonly=True)
    try:
        logged = predlog.logged_features(conn, body["request_id"])
    finally:
        conn.close()
    assert logged == {**sample_row(), "hour": 17.0}


def test_batch_accepts_unseen_categories_and_missing_numbers(served: str, project: Project) -> None:
    rows = [sample_row(), sample_row(carrier="never-seen"), sample_row(temp=None)]
    resp = post(served, {"rows": rows})
    assert resp.status_code == 200
    answers = resp.json()["predictions"]
    assert len(answers) == 3 and len({a["request_id"] for a in answers}) == 3
    logged = log_rows(served, project)
    assert {r["request_id"] for r in logged} == {a["request_id"] for a in answers}
    assert {r["f_carrier"] for r in logged} == {"AA", "never-seen"}


def test_the_example_model_shape_is_served_by_compiled_trees_with_its_own_answers(
    project: Project, registry: Registry, tmp_path: Path
) -> None:
    import pandas as pd

    candidate = synthetic_candidate(tmp_path / "boosting", boosting=True)
    register(registry, candidate)
    model, _ = registry.load("v1")
    rows = [sample_row(), sample_row(carrier="never-seen"), sample_row(temp=None),
            sample_row(hour=6, origin="LGA", distance=2400.0),
            sample_row(temp=-1000.0), sample_row(hour=-1e9, distance=1e308)]  # once a 500
    expected = model.predict_proba(pd.DataFrame(rows))[:, 1]  # type: ignore[attr-defined]
    with running_server(project) as url:
        assert serving(url)["scorers"]["v1"].startswith("compiled trees (agree with scikit-learn")
        answers = post(url, {"rows": rows}).json()["predictions"]
        single = post(url, rows[0]).json()
    assert [a["probability"] for a in answers] == [float(p) for p in expected]
    assert single["probability"] == float(expected[0])


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({k: v for k, v in sample_row().items() if k != "temp"}, ["body", "temp"]),
        (sample_row(extra_field=1), ["body", "extra_field"]),
        (sample_row(hour="17"), ["body", "hour"]),
        (sample_row(carrier=7), ["body", "carrier"]),
        (sample_row(distance=True), ["body", "distance"]),
        ({"rows": [sample_row(), sample_row(origin=None)]}, ["body", "rows", 1, "origin"]),
        ({"rows": []}, ["body", "rows"]),
        ([sample_row()], ["body"]),
    ],
)
def test_bad_rows_get_422_naming_the_field(served: str, body: Any, loc: list[Any]) -> None:
    resp = post(served, body)
    assert resp.status_code == 422
    assert loc in [problem["loc"] for problem in resp.json()["detail"]]


def test_not_json_and_oversized_batches_get_422(served: str) -> None:
    resp = httpx.post(f"{served}/predict", content=b"{not json", headers=JSON, timeout=5)
    assert resp.status_code == 422 and "not valid JSON" in resp.json()["detail"][0]["msg"]
    resp = post(served, {"rows": [sample_row()] * 1001})
    assert resp.status_code == 422 and "max_batch_rows" in resp.json()["detail"][0]["msg"]
    huge = b" " * (1000 * 16384 + 1)  # beyond 16 KB per allowed row
    resp = httpx.post(f"{served}/predict", content=huge, headers=JSON, timeout=30)
    assert resp.status_code == 413 and "max_batch_rows" in resp.json()["detail"]

def test_a_batch_of_the_wrong_shape_gets_one_problem_and_feedback_413_names_feedback(
    fuzz_server: str,
) -> None:
    """Regression (issue 16, defect 9): {"rows": {...}} got a "field required" error for
    every feature, and a 20 MB /feedback body's 413 talked about serve.max_batch_rows."""
    for body, loc, words in [
        ({"rows": sample_row()}, ["body", "rows"], "'rows' must be a list of rows"),
        ({"rows": "x"}, ["body", "rows"], "not a string"),
        ({"rows": [sample_row()], "model": "v2"}, ["body", "model"], "nothing else"),
    ]:
        resp = post(fuzz_server, body)
        assert resp.status_code == 422, resp.text
        [problem] = resp.json()["detail"]
        assert problem["loc"] == loc and words in problem["msg"], problem
    resp = httpx.post(f"{fuzz_server}/feedback", content=b" " * (20 << 20),
                      headers=JSON, timeout=30)
    assert resp.status_code == 413
    assert "feedback" in resp.json()["detail"] and "max_batch_rows" not in resp.json()["detail"]


def test_post_bodies_must_be_json_so_no_web_page_can_post_cross_site(fuzz_server: str) -> None:
    """Regression (issue 16, defect 10): text/plain bodies (a "simple" cross-site request
    any web page may send) were accepted by /predict and /feedback."""
    body = json.dumps(sample_row()).encode()
    for route in ("/predict", "/feedback"):
        for headers in ({"content-type": "text/plain"}, {},
                        {"content-type": "application/x-www-form-urlencoded"}):
            resp = httpx.post(f"{fuzz_server}{route}", content=body, headers=headers)
            assert resp.status_code == 415, (route, headers, resp.text)
            assert "Content-Type: application/json" in resp.json()["detail"]
    charset = {"content-type": "application/json; charset=utf-8"}
    assert httpx.post(f"{fuzz_server}/predict", content=body, headers=charset).status_code == 200
    assert httpx.get(f"{fuzz_server}/docs").status_code == 200  # loopback: docs on


def test_a_token_guards_feedback_and_a_server_beyond_loopback_needs_one(
    project: Project, registry: Registry, candidates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nbpipeline.monitor.replay import replay

    register(registry, candidates["a"])
    with running_server(project, access=Access(token="s3cret")) as url:
        request_id = post(url, sample_row()).json()["request_id"]  # /predict: no token
        feedback = {"request_id": request_id, "outcome": 1}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            resp = httpx.post(f"{url}/feedback", json=feedback, headers=headers)
            assert resp.status_code == 401 and "Bearer" in resp.headers["www-authenticate"]
            assert "Authorization: Bearer <token>" in resp.json()["detail"]
        resp = httpx.post(f"{url}/feedback", json=feedback,
                          headers={"authorization": "Bearer s3cret"})
        assert resp.status_code == 200 and resp.json()["recorded"] is True
        monkeypatch.setenv(TOKEN_ENV, "s3cret")  # `nbp replay` sends it with feedback
        sent = replay(url, synthetic_rows(5), NAMES, target="target", rate=1000)
        assert (sent.predicted, sent.feedback, sent.errors) == (5, 5, 0)
    with running_server(project, access=Access(loopback=False)) as url:
        resp = httpx.post(f"{url}/feedback", json=feedback)
        assert resp.status_code == 403 and "--token-file" in resp.json()["detail"]
        assert httpx.get(f"{url}/docs").status_code == 404  # not on loopback: docs off
        assert httpx.get(f"{url}/openapi.json").status_code == 404


finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
wrong_for_number = st.text(max_size=5) | st.booleans() | st.lists(st.integers(), max_size=2)
wrong_for_category = st.integers() | finite | st.none() | st.booleans()


@st.composite
def broken_rows(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid row with one field missing, mistyped or added; returns (row, field)."""
    row = sample_row()
    name = draw(st.sampled_from(NAMES))
    how = draw(st.sampled_from(["missing", "mistyped", "extra"]))
    if how == "missing":
        del row[name]
    elif how == "mistyped":
        kind = next(f["kind"] for f in FEATURES if f["name"] == name)
        row[name] = draw(wrong_for_number if kind == "number" else wrong_for_category)
    else:
        name = draw(st.text(min_size=1, max_size=10).filter(lambda n: n not in NAMES))
        row[name] = draw(json_values)
    return row, name


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, candidates: dict[str, Path]
) -> Iterator[str]:
    project = make_project(tmp_path_factory.mktemp("fuzz") / "proj")
    register(Registry(project.registry), candidates["a"])
    with running_server(project) as url:
        yield url


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values)
def test_fuzzed_bodies_never_get_a_5xx(fuzz_server: str, body: Any) -> None:
    resp = post(fuzz_server, body)
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["detail"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=64) | st.sampled_from([
    b'{"carrier": "AA", "origin": "JFK", "distance": NaN, "hour": 1, "temp": 2}',
    b'{"carrier": "AA", "origin": "JFK", "distance": Infinity, "hour": 1, "temp": 2}',
    b"[" * 100000, b'{"rows": ' + b"[" * 5000 + b"]" * 5000 + b"}", b"",
]))
def test_fuzzed_bytes_never_get_a_5xx(fuzz_server: str, raw: bytes) -> None:
    resp = httpx.post(f"{fuzz_server}/predict", content=raw, headers=JSON, timeout=10)
    assert 400 <= resp.status_code < 500, resp.text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=broken_rows(), batch=st.booleans())
def test_fuzzed_rows_get_422_naming_the_broken_field(
    fuzz_server: str, case: tuple[dict[str, Any], str], batch: bool
) -> None:
    row, name = case
    resp = post(fuzz_server, {"rows": [sample_row(), row]} if batch else row)
    assert resp.status_code == 422, resp.text
    where = ["body", "rows", 1, name] if batch else ["body", name]
    assert where in [problem["loc"] for problem in resp.json()["detail"]]


# ---------------------------------------------------------------- canary
def test_canary_gets_its_fraction_and_a_key_always_lands_on_one_side(
    served: str, project: Project, registry: Registry, candidates: dict[str, Path]
) -> None:
    v2 = register(registry, candidates["b"], champion=False)
    registry.promote(v2, canary_fraction=0.3, reason="try", actor="test")
    wait_for(lambda: serving(served)["canary"] == v2)
    roles = []
    for _ in range(5):
        answers = post(served, {"rows": [sample_row()] * 200}).json()["predictions"]
        roles += [(a["role"], a["model_version"]) for a in answers]
    share = sum(role == "canary" for role, _ in roles) / len(roles)
    assert 0.24 <= share <= 0.36, share
    assert {v for r, v in roles if r == "canary"} == {v2}
    for key in ("customer-1", "customer-2", "customer-3"):
        seen = {post(served, sample_row(), headers={"X-Routing-Key": key}).json()["role"]
                for _ in range(5)}
        assert len(seen) == 1
    assert len(log_rows(served, project, "routing_key = ?", ("customer-2",))) == 5


# ---------------------------------------------------------------- feedback
def test_feedback_is_recorded_for_known_ids_and_404_for_unknown(
    served: str, project: Project
) -> None:
    request_id = post(served, sample_row()).json()["request_id"]
    resp = httpx.post(f"{served}/feedback", json={"request_id": request_id, "outcome": 1})
    assert resp.status_code == 200 and resp.json()["recorded"] is True
    conn = predlog.connect(predlog.default_log_path(project.root), readonly=True)
    assert conn.execute("SELECT outcome FROM feedback WHERE request_id = ?",
                        (request_id,)).fetchone() == (1,)
    conn.close()
    resp = httpx.post(f"{served}/feedback", json={"request_id": "no-such-id", "outcome": 0})
    assert resp.status_code == 404 and "no-such-id" in resp.json()["detail"]
    resp = httpx.post(f"{served}/feedback", json={"request_id": request_id, "outcome": 3})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "outcome"]


# ---------------------------------------------------------------- metrics, health
def test_startup_objects_are_frozen_out_of_the_garbage_collector(served: str) -> None:
    """Regression: full GC passes walked every library and model object and stalled all
    requests in flight for ~120 ms (p99 at c=32 was 140 ms). The server freezes what it
    loaded at startup, so those passes skip it."""
    import gc

    assert post(served, sample_row()).status_code == 200
    assert gc.get_freeze_count() > 10_000  # sklearn, pandas, the model: all frozen


def test_metrics_count_requests_errors_latency_per_version_and_process(served: str) -> None:
    for _ in range(3):
        post(served, sample_row())
    post(served, {"bad": 1})
    settled(served)
    text = httpx.get(f"{served}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    assert samples[("nbp_http_requests_total", (("endpoint", "/predict"), ("status", "200")))] == 3
    assert samples[("nbp_http_requests_total", (("endpoint", "/predict"), ("status", "422")))] == 1
    assert samples[("nbp_errors_total", (("kind", "validation"),))] == 1
    assert samples[("nbp_predict_latency_seconds_count",
                    (("model_version", "v1"), ("role", "champion")))] == 3
    assert samples[("nbp_log_rows_total", ())] == 3
    assert samples[("nbp_model_call_rows_sum", ())] == 3
    assert samples[("nbp_model_serving", (("model_version", "v1"), ("role", "champion")))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 10e6
    assert ("process_cpu_seconds_total", ()) in samples


def test_not_ready_without_a_champion_then_serves_once_promoted(
    project: Project, registry: Registry, candidates: dict[str, Path]
) -> None:
    with running_server(project) as url:
        assert httpx.get(f"{url}/ready").status_code == 503
        resp = post(url, sample_row())
        assert resp.status_code == 503 and "nbp promote" in resp.json()["detail"]
        register(registry, candidates["a"])
        wait_for(lambda: httpx.get(f"{url}/ready").status_code == 200)
        assert post(url, sample_row()).json()["model_version"] == "v1"


# ---------------------------------------------------------------- hot reload
def test_promote_rollback_and_off_switch_apply_without_restart(
    served: str, project: Project, registry: Registry, candidates: dict[str, Path]
) -> None:
    register(registry, candidates["b"])
    wait_for(lambda: post(served, sample_row()).json()["model_version"] == "v2")
    registry.rollback(reason="worse", actor="test")
    wait_for(lambda: post(served, sample_row()).json()["model_version"] == "v1")

    registry.switch_off(reason="incident", actor="test")
    answer = wait_for(lambda: (a := post(served, sample_row()).json())["fallback"] and a)
    assert answer["role"] == "fallback" and answer["prediction"] == 0
    assert answer["model_version"] is None
    assert httpx.get(f"{served}/ready").status_code == 200
    assert serving(served)["off_reason"] == "incident"
    [row] = log_rows(served, project, "request_id = ?", (answer["request_id"],))
    assert row["fallback"] == 1 and row["role"] == "fallback" and row["f_carrier"] == "AA"
    bad = post(served, sample_row(hour="x"))
    assert bad.status_code == 422  # still validated while switched off

    registry.promote("v2", canary_fraction=None, reason="fixed", actor="test")
    wait_for(lambda: post(served, sample_row()).json()["model_version"] == "v2")


def test_damaged_model_file_is_kept_out_and_the_last_good_one_serves(
    served: str, registry: Registry, candidates: dict[str, Path]
) -> None:
    mv = registry.register(candidates["b"], None, force_reason=None, actor="test")
    stored = registry.object_path(mv.sha256)
    good = stored.read_bytes()
    stored.write_bytes(good[: len(good) // 2])
    # `promote` now refuses a damaged file (issue 16): write the event as if the file had
    # been damaged between the promotion and the server's load
    with registry._locked() as (fh, events):
        registry._append(fh, events, "promote", "test", "try",
                         {"version": mv.version, "role": "champion", "previous": "v1"})
    health = wait_for(lambda: (h := serving(served))["errors"] and h)
    assert health["status"] == "degraded" and health["champion"] == "v1"
    assert "champion v2 not loaded" in health["errors"][0] and "damaged" in health["errors"][0]
    for _ in range(5):
        assert post(served, sample_row()).json()["model_version"] == "v1"

    stored.write_bytes(good)  # repaired: picked up by the periodic retry
    wait_for(lambda: serving(served)["champion"] == "v2")
    assert serving(served)["status"] == "ok"


def test_a_fresh_server_with_a_damaged_champion_names_the_file_and_the_fix(
    project: Project, registry: Registry, candidates: dict[str, Path]
) -> None:
    """Regression (issue 16, defect 6): the 503 said "the registry has no champion —
    promote one". A damaged canary kept the champion out too (sibling)."""
    register(registry, candidates["a"])
    stored = registry.object_path(registry.get("v1").sha256)
    good = stored.read_bytes()
    stored.write_bytes(good[:100])
    with running_server(project) as url:
        resp = post(url, sample_row())
        assert resp.status_code == 503
        detail = resp.json()["detail"]
        relative = str(stored.relative_to(project.root))
        assert "champion v1 cannot be loaded" in detail and "no champion" not in detail
        assert f"{relative}: model file of v1 is damaged" in detail
        assert "nbp rollback" in detail and "backup" in detail
        assert str(project.root) not in json.dumps(serving(url))  # no absolute paths
        assert serving(url)["log"]["path"] == "logs/predictions.db"
        stored.write_bytes(good)
        wait_for(lambda: httpx.get(f"{url}/ready").status_code == 200)

    v2 = register(registry, candidates["b"], champion=False)
    registry.promote(v2, canary_fraction=0.5, reason="try", actor="test")
    canary_file = registry.object_path(registry.get(v2).sha256)
    canary_file.write_bytes(canary_file.read_bytes()[:100])
    with running_server(project) as url:
        answers = post(url, {"rows": [sample_row()] * 20}).json()["predictions"]
        assert {a["model_version"] for a in answers} == {"v1"}
        health = serving(url)
        assert health["champion"] == "v1" and health["canary"] is None
        assert health["status"] == "degraded" and "canary v2 not loaded" in health["errors"][0]


def test_a_model_that_fails_on_valid_input_answers_500_naming_it(
    project: Project, registry: Registry, tmp_path: Path
) -> None:
    cand = synthetic_candidate(tmp_path / "mismatch", c=0.5)
    meta = json.loads((cand / "metadata.json").read_text())
    meta["features"] = [dict(f, name="temperature") if f["name"] == "temp" else f
                        for f in meta["features"]]  # schema and pipeline disagree
    (cand / "metadata.json").write_text(json.dumps(meta))
    register(registry, cand)
    with running_server(project) as url:
        resp = post(url, {k if k != "temp" else "temperature": v for k, v in sample_row().items()})
        assert resp.status_code == 500 and "model v1 failed" in resp.json()["detail"]
        assert httpx.get(f"{url}/health").json()["status"] == "ok"  # the server itself is fine
        assert "nbp_errors_total{kind=\"model\"} 1.0" in httpx.get(f"{url}/metrics").text


def test_a_damaged_registry_log_keeps_the_current_models_serving(
    served: str, registry: Registry
) -> None:
    good = registry.events_path.read_bytes()
    registry.events_path.write_bytes(good + b"{not an event}\n")
    health = wait_for(lambda: (h := serving(served))["errors"] and h)
    assert health["status"] == "degraded" and "events.jsonl" in health["errors"][0]
    assert post(served, sample_row()).json()["model_version"] == "v1"
    registry.events_path.write_bytes(good)  # restored from a backup
    wait_for(lambda: serving(served)["status"] == "ok")


def test_a_transient_lock_degrades_health_and_counts_log_errors_until_it_clears(
    served: str, project: Project
) -> None:
    """Regression (issue 16, defect 3): /health stayed degraded ("database is locked")
    after the lock cleared and the backlog drained, and nbp_errors_total{kind="log"}
    never counted these errors."""
    blocker = sqlite3.connect(predlog.default_log_path(project.root), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the log (~5 s busy timeout)
    try:
        answer = post(served, sample_row())
        assert answer.status_code == 200  # answered (spooled) while SQLite is locked
        health = wait_for(lambda: (h := serving(served))["errors"] and h, timeout=30)
        assert health["status"] == "degraded" and "database is locked" in health["errors"][0]
        assert health["log"]["spooled_bytes"] > 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_for(lambda: (h := serving(served))["status"] == "ok" and not h["errors"], timeout=30)
    assert serving(served)["log"]["spooled_bytes"] == 0
    assert log_rows(served, project, "request_id = ?", (answer.json()["request_id"],))
    text = httpx.get(f"{served}/metrics").text
    errors = {s.labels["kind"]: s.value for family in text_string_to_metric_families(text)
              for s in family.samples if s.name == "nbp_errors_total"}
    assert errors["log"] >= 1


def test_a_restarted_server_on_all_interfaces_reports_recovered_rows_and_guards_itself(
    project: Project, registry: Registry, candidates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regressions (issue 16): `nbp serve` moved a dead server's spool in before its real
    writer started, so /health said recovered_rows 0 and the log line was lost (defect 2);
    `--host 0.0.0.0` without a token took feedback from anyone and served /docs (defect 10).
    One real `nbp serve` process checks both (a process start is the costly part)."""
    from nbpipeline.predlog import spool

    register(registry, candidates["a"])
    path = predlog.default_log_path(project.root)
    records = [predlog.PredictionRecord(
        request_id=f"dead-{i}", ts=1.0, model_version="v1", role="champion", prediction=1,
        probability=0.5, latency_ms=1.0, features=sample_row()) for i in range(3)]
    dead = spool.Spool(spool.spool_dir(path))
    dead.append(predlog.encode_rows(records, frozenset()))
    assert dead.close() > 0  # left behind, unlocked, as after kill -9
    port = free_port()
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    proc = start_server_process(project, port, "--host", "0.0.0.0")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)
        assert serving(url)["log"]["recovered_rows"] == 3
        resp = httpx.post(f"{url}/feedback", json={"request_id": "dead-1", "outcome": 1})
        assert resp.status_code == 403 and TOKEN_ENV in resp.json()["detail"]
        assert httpx.get(f"{url}/docs").status_code == 404
        assert post(url, sample_row()).status_code == 200  # predictions stay open
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "moved 3 rows left in the spool" in err.decode()
    [warning] = [line for line in err.decode().splitlines() if line.startswith("WARNING")]
    assert "0.0.0.0 (beyond loopback) without a token" in warning


# ---------------------------------------------------------------- settings
def test_serve_settings_are_checked(tmp_path: Path) -> None:
    s = settings_from_params({"serve": {"fallback_prediction": 1},
                              "evaluate": {"decision_threshold": 0.35}}, tmp_path)
    assert s.fallback_prediction == 1 and s.decision_threshold == 0.35
    with pytest.raises(ServeError, match="serve.fallback_predicton"):
        settings_from_params({"serve": {"fallback_predicton": 1}}, tmp_path)
    with pytest.raises(ServeError, match="serve.log"):
        settings_from_params({"serve": {"log": "yes"}}, tmp_path)
    with pytest.raises(ServeError, match="serve.fallback_prediction"):
        settings_from_params({"serve": {"fallback_prediction": 2}}, tmp_path)


def test_serve_refuses_a_taken_port_and_an_unwritable_log_with_one_clear_error(
    project: Project, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            serve(project, "127.0.0.1", port)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings = ServeSettings(log_path=blocker / "predictions.db")
    with pytest.raises(ServeError, match="cannot open the prediction log"):
        serve(project, "127.0.0.1", 0, settings=settings)
