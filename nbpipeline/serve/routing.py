"""Canary routing: a stable hash of a key decides which model answers.

The same key always lands on the same side for a given fraction, in every process and
after every restart (sha256, not Python's salted ``hash``), so one caller sees one model.
"""

from __future__ import annotations

import hashlib

ROUTING_HEADER = "x-routing-key"
_SCALE = float(1 << 64)


def bucket(key: str) -> float:
    """A number in [0, 1) fixed by ``key``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def goes_to_canary(key: str, fraction: float) -> bool:
    """True if ``key`` falls in the canary's share ``fraction`` of traffic."""
    return fraction > 0.0 and bucket(key) < fraction
