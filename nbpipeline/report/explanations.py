"""Example explanations: a few golden rows and each feature's contribution to their score.

The evaluate notebook picks the rows with :func:`pick_examples` (the highest score, the
lowest, and the one nearest the decision threshold; for a regressor the one nearest the
median prediction), explains them with ``nbpipeline.serve.explain.explain_frame`` (what
``POST /explain`` answers) and records them with :func:`example_rows` as
``plots/evaluate/explanations.csv``. The index reads them back with :func:`read_examples`
and shows them with :func:`examples_card`. This module is the one home of that file's
format: one line per example and feature, the example's features largest |contribution|
first, with the columns :data:`COLUMNS`:

    example       the row's position in the golden split (0-based)
    why           why it was picked ("highest score", "nearest the threshold 0.35", ...)
    score         the model's output for the row: P(positive) or the predicted value
    raw_score     base_value + the sum of the row's contributions (log-odds for a classifier)
    base_value    the model's expected raw score
    link          ``logit`` (a classifier: score = expit(raw_score)) or ``identity``
    feature, value, contribution   a feature, its value in the row, its part of raw_score
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from nbpipeline.report.html import fmt, table

__all__ = ["COLUMNS", "Example", "example_rows", "examples_card", "pick_examples",
           "read_examples"]

FILE = "explanations.csv"  # in plots/evaluate/
COLUMNS = ("example", "why", "score", "raw_score", "base_value", "link", "feature", "value",
           "contribution")
SHOWN = 6  # features per example on the index; the rest summed in one line


@dataclass(frozen=True)
class Example:
    """One explained row: ``features`` are (feature, value, contribution), largest
    |contribution| first."""

    example: str
    why: str
    score: float
    raw_score: float
    base_value: float
    link: str
    features: tuple[tuple[str, str, float], ...]


def pick_examples(scores: Sequence[float], task: str, threshold: float) -> dict[int, str]:
    """Positions of the rows worth explaining -> why: the highest and the lowest score and
    the score nearest ``threshold`` (a regressor: nearest the median prediction). A row
    that is two of these is listed once, under its first reason."""
    values = [float(s) for s in scores]
    usable = [i for i, v in enumerate(values) if math.isfinite(v)]
    if not usable:
        return {}
    if task == "regression":
        ordered = sorted(values[i] for i in usable)
        middle, label = ordered[len(ordered) // 2], "nearest the median prediction"
    else:
        middle, label = threshold, f"nearest the threshold {fmt(float(threshold))}"
    picked: dict[int, str] = {}
    for position, why in ((max(usable, key=values.__getitem__), "highest score"),
                          (min(usable, key=values.__getitem__), "lowest score"),
                          (min(usable, key=lambda i: abs(values[i] - middle)), label)):
        picked.setdefault(position, why)
    return picked


def example_rows(explained: Any, picked: Mapping[int, str], scores: Sequence[float]
                 ) -> list[dict[str, Any]]:
    """The lines of explanations.csv for ``picked`` (position -> why, :func:`pick_examples`),
    from ``explained``: what explain_frame answered for those rows with their positions as
    the frame's labels and every feature (``top`` = the number of features). ``scores`` are
    the model's outputs for all rows, by position."""
    found: dict[int, list[dict[str, Any]]] = {}
    for line in explained.examples.to_dict("records"):
        found.setdefault(int(line["row"]), []).append(line)
    out = []
    for position, why in picked.items():
        lines = sorted(found.get(position, []), key=lambda r: -abs(float(r["contribution"])))
        raw = float(explained.base_value) + sum(float(r["contribution"]) for r in lines)
        out += [{"example": position, "why": why, "score": round(float(scores[position]), 6),
                 "raw_score": round(raw, 6), "base_value": round(float(explained.base_value), 6),
                 "link": explained.link, "feature": line["feature"], "value": line["value"],
                 "contribution": line["contribution"]} for line in lines]
    return out


def read_examples(folder: Path) -> list[Example]:
    """The examples in ``folder``/explanations.csv in the file's order, each one's features
    largest |contribution| first ([] without the file or with a file of another shape: the
    index still builds)."""
    try:
        with open(folder / FILE, encoding="utf-8", newline="") as fh:
            lines = list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return []
    grouped: dict[str, list[dict[str, str]]] = {}
    for line in lines:
        grouped.setdefault(line.get("example") or "", []).append(line)
    examples = []
    try:
        for example, rows in grouped.items():
            first = rows[0]
            examples.append(Example(
                example, first["why"], float(first["score"]), float(first["raw_score"]),
                float(first["base_value"]), first["link"],
                tuple(sorted(((r["feature"], r["value"], float(r["contribution"]))
                              for r in rows), key=lambda f: -abs(f[2])))))
    except (KeyError, TypeError, ValueError):
        return []
    return examples


def _signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "\u2212")


def _bar(value: float, largest: float) -> str:
    """A bar from the middle: right (dark) for a push up, left (light) for a push down."""
    width = min(50.0, abs(value) / largest * 50) if largest else 0.0
    side = (f"left:50%;width:{width:.0f}%;background:var(--ink)" if value >= 0
            else f"right:50%;width:{width:.0f}%;background:var(--accent)")
    return (f'<div style="position:relative;height:10px;width:160px;background:var(--bg)">'
            f'<div style="position:absolute;top:0;bottom:0;{side};border-radius:2px"></div>'
            "</div>")


def _example_html(example: Example, largest: float) -> str:
    shown, rest = example.features[:SHOWN], example.features[SHOWN:]
    rows = [[f"<code>{escape(name)}</code>", escape(value) or '<span class="muted">missing'
             "</span>", _signed(contribution), _bar(contribution, largest)]
            for name, value, contribution in shown]
    if rest:
        rows.append([f'<span class="muted">{len(rest)} other features</span>', "",
                     _signed(sum(c for _, _, c in rest)), ""])
    what = "P(positive)" if example.link == "logit" else "prediction"
    unit = " (log-odds)" if example.link == "logit" else ""
    return (f"<h3>golden row {escape(example.example)}: {escape(example.why)}</h3>"
            f"<p>{what} <b>{fmt(example.score)}</b>; raw score{unit} {_signed(example.raw_score)}"
            f" = base {_signed(example.base_value)} + contributions "
            f"{_signed(example.raw_score - example.base_value)}</p>"
            + table(["feature", "value", "contribution", ""], rows, {2}))


def examples_card(examples: Sequence[Example]) -> str:
    """The index's card "Why single decisions" ("" without examples)."""
    if not examples:
        return ""
    largest = max((abs(c) for e in examples for _, _, c in e.features), default=0.0)
    return ('<div class="card"><h2>Why single decisions (golden examples)</h2>'
            '<p class="muted">the rows with the highest and the lowest score and the one '
            "nearest the decision threshold (a regressor: the median prediction), explained as "
            "<code>POST /explain</code> answers: each feature's contribution to the raw score "
            "along the trees' paths; + pushes the score up (dark bar), \u2212 down (blue bar); "
            f"largest first ({FILE})</p>"
            + "".join(_example_html(e, largest) for e in examples) + "</div>")
