"""HTTP bodies of /predict and /feedback, built from a model's feature schema.

A model's ``metadata["features"]`` (docs/contracts.md) becomes a strict pydantic row
model: every feature is required, no other field is allowed, numbers are JSON numbers
(or ``null`` for a missing measurement), categories are strings (values never seen in
training are valid: the pipeline encodes them as unknown).

``POST /predict`` takes either one row (a JSON object of features) or a batch
``{"rows": [row, ...]}``. Problems become a 422 whose ``detail`` lists each one with
its location, e.g. ``["body", "rows", 3, "<feature>"]``, in FastAPI's usual format.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    create_model,
)

from nbpipeline.errors import ServeError

BATCH_KEY = "rows"
MAX_CATEGORY_LENGTH = 1000

Number = Annotated[float | None, Field(strict=True, allow_inf_nan=False)]
Category = Annotated[str, Field(strict=True, max_length=MAX_CATEGORY_LENGTH)]


class BodyError(Exception):
    """A request body that does not fit the schema; ``detail`` is the 422 payload."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail[0]["msg"] if detail else "invalid body")
        self.detail = detail


def _problem(loc: Sequence[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


@dataclass(frozen=True)
class FeatureSchema:
    """The input contract of one model: feature names, kinds and a row validator."""

    names: tuple[str, ...]
    kinds: dict[str, str]
    row_model: type[BaseModel]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, version: str) -> FeatureSchema:
        """Read ``metadata["features"]``; ServeError naming the version if unusable."""
        features = metadata.get("features")
        if not isinstance(features, list) or not features:
            raise ServeError(
                f"model {version}: metadata has no 'features' list, so requests cannot be "
                "validated; re-train it with the current train notebook and register it again"
            )
        kinds: dict[str, str] = {}
        for spec in features:
            name = spec.get("name") if isinstance(spec, Mapping) else None
            kind = spec.get("kind") if isinstance(spec, Mapping) else None
            if not isinstance(name, str) or kind not in ("number", "category") or name in kinds:
                raise ServeError(
                    f"model {version}: metadata feature {spec!r} is not a unique "
                    "{'name', 'kind': 'number'|'category'} entry; fix the train notebook"
                )
            kinds[name] = kind
        # Field names are positional (names need not be identifiers); the alias is the
        # feature name, so errors and input use the real names.
        definitions: dict[str, Any] = {
            f"f{i}": (Number if kind == "number" else Category, Field(alias=name))
            for i, (name, kind) in enumerate(kinds.items())
        }
        row_model = create_model(  # type: ignore[call-overload]
            f"Row_{version}",
            __config__=ConfigDict(extra="forbid", populate_by_name=False),
            **definitions,
        )
        return cls(tuple(kinds), kinds, row_model)

    def validate_row(self, row: Any, loc: tuple[str | int, ...]) -> dict[str, Any]:
        """The row as a plain dict in feature order; BodyError naming each bad field."""
        if not isinstance(row, dict):
            raise BodyError([_problem(loc, "a row must be a JSON object of features", "dict_type")])
        try:
            parsed = self.row_model.model_validate(row)
        except ValidationError as exc:
            raise BodyError(
                [_problem((*loc, *err["loc"]), _message(err), err["type"]) for err in exc.errors()]
            ) from None
        values = parsed.__dict__
        return {name: values[f"f{i}"] for i, name in enumerate(self.names)}

    def json_schema(self) -> dict[str, Any]:
        """JSON schema of one row (for GET /schema)."""
        return self.row_model.model_json_schema(by_alias=True)


def _message(err: Mapping[str, Any]) -> str:
    field = err["loc"][-1] if err["loc"] else "body"
    if err["type"] == "missing":
        return f"field '{field}' is required"
    if err["type"] == "extra_forbidden":
        return f"field '{field}' is not a feature of this model; remove it"
    return f"field '{field}': {err['msg']}"


def parse_body(
    raw: bytes, max_rows: int, features: Collection[str] = ()
) -> tuple[list[Any], bool]:
    """Split a /predict body into raw rows; returns (rows, is_batch).

    A body with the key ``rows`` is a batch unless ``rows`` is one of the model's
    ``features``: it must then be ``{"rows": [row, ...]}`` and nothing else (an object or a
    row with ``rows`` beside its features is one clear problem, not one per feature).
    """
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        problem = _problem(("body",), f"body is not valid JSON ({exc})", "json_invalid")
        raise BodyError([problem]) from None
    if isinstance(body, dict) and BATCH_KEY in body and BATCH_KEY not in features:
        return _batch(body, max_rows), True
    if isinstance(body, dict):
        return [body], False
    raise BodyError([_problem(
        ("body",), 'body must be one row (a JSON object) or {"rows": [row, ...]}', "dict_type"
    )])


def _batch(body: dict[str, Any], max_rows: int) -> list[Any]:
    """The rows of a batch body ``{"rows": [row, ...]}``."""
    others = sorted(set(body) - {BATCH_KEY})
    if others:
        raise BodyError([_problem(
            ("body", others[0]),
            f'a batch is {{"rows": [row, ...]}} and nothing else; move {others[0]!r} into '
            "each row or remove it", "extra_forbidden",
        )])
    rows = body[BATCH_KEY]
    if not isinstance(rows, list):
        raise BodyError([_problem(
            ("body", BATCH_KEY),
            f"'rows' must be a list of rows (JSON objects), not {_json_type(rows)}", "list_type",
        )])
    if not rows:
        raise BodyError([_problem(("body", BATCH_KEY), "'rows' is empty", "too_short")])
    if len(rows) > max_rows:
        raise BodyError([_problem(
            ("body", BATCH_KEY),
            f"{len(rows)} rows in one request; send at most {max_rows} (serve.max_batch_rows)",
            "too_long",
        )])
    return rows


def _json_type(value: Any) -> str:
    """How JSON calls the type of a parsed value (for messages)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else "an array"


class Feedback(BaseModel):
    """POST /feedback body: the real outcome of an earlier prediction."""

    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(strict=True, min_length=1, max_length=200)]
    # 0/1 for a classification decision (checked against the logged decision), any
    # finite number for a regression's prediction; an integer must fit the log's INTEGER
    # column (a 400-digit one once made SQLite raise OverflowError: a 503)
    outcome: Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] | Annotated[
        StrictFloat, AllowInfNan(False)]


OUTCOME_PROBLEM = "field 'outcome' must be a finite number (0 or 1 for a classification decision)"


def parse_feedback(raw: bytes) -> Feedback:
    """Validate a /feedback body; BodyError naming the bad field (one problem per field:
    the outcome's two accepted types are not reported apart)."""
    try:
        return Feedback.model_validate_json(raw)
    except ValidationError as exc:
        problems: dict[tuple[Any, ...], dict[str, Any]] = {}
        for err in exc.errors():
            loc = ("body", *err["loc"])
            if err["loc"][:1] == ("outcome",):
                loc = ("body", "outcome")
                err = {**err, "type": "finite_number"}
                problems.setdefault(loc, _problem(loc, OUTCOME_PROBLEM, err["type"]))
            else:
                problems.setdefault(loc, _problem(loc, _message(err), err["type"]))
        raise BodyError(list(problems.values())) from None
