"""Who may change state and what callers see: loopback, JSON bodies, the token, file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbpipeline.errors import ServeError
from nbpipeline.serve.security import TOKEN_ENV, Access, PathNames, is_json, is_loopback, read_token


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("example.org", False),
])
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_only_json_content_types_are_json() -> None:
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    for other in (None, "", "text/plain", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", "application/jsonp"):
        assert not is_json(other)


def test_the_token_comes_from_the_file_else_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token() is None
    monkeypatch.setenv(TOKEN_ENV, " from-env\n")
    assert read_token() == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert read_token(tmp_path / "token") == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ServeError, match="empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ServeError, match="cannot read the token file.*--token-file"):
        read_token(tmp_path / "missing")
    monkeypatch.setenv(TOKEN_ENV, "")
    with pytest.raises(ServeError, match="set but empty"):
        read_token()


def test_access_refuses_without_the_token_and_warns_once_beyond_loopback() -> None:
    assert Access().refusal(None) is None and Access().warning("127.0.0.1") is None
    guarded = Access(token="t0k")
    assert guarded.refusal("Bearer t0k") is None and guarded.refusal("bearer  t0k") is None
    assert [guarded.refusal(h)[0] for h in (None, "Bearer x", "t0k", "Basic t0k")] == [401] * 4
    exposed = Access(loopback=False)
    assert exposed.refusal("Bearer anything") == (403, exposed.refusal(None)[1])
    warning = exposed.warning("0.0.0.0")
    assert warning is not None and "\n" not in warning and TOKEN_ENV in warning
    assert Access(token="t0k", loopback=False).warning("0.0.0.0") is None


def test_files_are_named_relative_to_the_project_or_by_their_variable(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    names = PathNames.of(root, {"NBPIPELINE_REGISTRY": root / "registry",
                                "NBPIPELINE_PREDLOG": tmp_path / "elsewhere" / "log.db"})
    damaged = names(f"{root}/registry/objects/ab.skops: damaged")
    assert damaged == "registry/objects/ab.skops: damaged"
    moved = names(f"check {tmp_path}/elsewhere/log.db.spool/x.seg")
    assert moved == "check $NBPIPELINE_PREDLOG.spool/x.seg"


def test_feedback_outcomes_are_finite_numbers_that_fit_the_log() -> None:
    """Sibling of issue 16's defects: a 400-digit integer outcome passed validation and made
    SQLite raise OverflowError (a 503 for a body any client can send)."""
    from nbpipeline.serve.schema import BodyError, parse_feedback

    assert parse_feedback(b'{"request_id": "r", "outcome": 12.5}').outcome == 12.5
    assert parse_feedback(b'{"request_id": "r", "outcome": -9223372036854775808}').outcome
    for outcome in ("9" * 400, "1e400", "true", '"1"', "null", "NaN"):
        with pytest.raises(BodyError) as caught:
            parse_feedback(f'{{"request_id": "r", "outcome": {outcome}}}'.encode())
        [problem] = caught.value.detail
        assert problem["loc"] == ["body", "outcome"] and "finite number" in problem["msg"]
