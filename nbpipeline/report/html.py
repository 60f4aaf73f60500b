"""HTML pieces the review pages share: numbers, differences, tables, badges (inline CSS
classes of templates/index.html; no scripts)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

LOWER_IS_BETTER = ("log_loss", "brier", "latency")
HIGHER_IS_BETTER = ("roc_auc", "average_precision", "accuracy", "precision", "recall", "f1",
                    "roi")


def fmt(value: Any) -> str:
    """A value as the pages show it: 4 decimals at most, thousands separated, "–" for None."""
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return "–" if value is None else str(value)


def delta(name: str, new: Any, old: Any) -> str:
    """``new - old`` of metric ``name``, green when better, red when worse, grey otherwise."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (new, old))
    if not numbers:
        return '<span class="same">–</span>'
    diff = float(new) - float(old)
    if abs(diff) < 1e-12:
        return '<span class="same">=</span>'
    leaf = name.rsplit(".", 1)[-1]
    if any(k in leaf for k in LOWER_IS_BETTER):
        kind = "up" if diff < 0 else "down"
    elif any(k in leaf for k in HIGHER_IS_BETTER):
        kind = "up" if diff > 0 else "down"
    else:
        kind = "same"  # a count or a chosen value: neither good nor bad
    return f'<span class="{kind}">{diff:+.4f}</span>'


def table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    """An HTML table of ready-made cells; the columns ``numeric`` right-aligned."""
    numeric = numeric or set()
    head = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>"
                   for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def badge(kind: str, text: str) -> str:
    """A pill: ``kind`` is pass, fail, warn or none."""
    return f'<span class="badge {kind}">{escape(text)}</span>'
