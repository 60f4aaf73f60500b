"""Drift statistics on binned distributions: PSI, KS (numbers), chi-square (categories).

Everything here works on *counts per bin*, never on raw rows, so the monitor can bin a
million logged predictions inside SQLite and only move small histograms into Python.
Each statistic is computed for many windows at once: ``cur`` is an array
[windows, bins] against one reference vector, or against one reference row per window
(a rolling reference: the previous windows).

Numbers are binned on a fine equal-width grid fitted to the reference (see
:mod:`nbpipeline.monitor.reference`): the KS statistic is evaluated at every grid edge
(so it is exact up to the grid's resolution) and PSI uses about ten groups of adjacent
grid bins holding equal reference mass (the usual decile PSI). The missing-value share is
a bin of its own in PSI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

PSI_GROUPS = 10
PSI_EPSILON = 1e-4
MIN_EXPECTED = 5  # categories expected fewer times in a window are pooled


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature in one window against the reference."""

    feature: str
    kind: str  # "number" | "category" | "output"
    rows: int
    psi: float
    statistic: float  # KS D for numbers, chi-square statistic for categories
    p_value: float
    test: str  # "ks" | "chi2"
    missing_ref: float
    missing_cur: float


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    total = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    shares = np.clip(shares, PSI_EPSILON, None)
    return shares / shares.sum(axis=1, keepdims=True)


def psi_many(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """PSI of each row of ``cur`` against ``ref`` (same bins)."""
    p, q = _shares(ref), _shares(cur)
    return np.sum((q - p) * np.log(q / p), axis=1)


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    return float(psi_many(ref_counts, cur_counts)[0])


def quantile_groups(ref_counts: np.ndarray, groups: int = PSI_GROUPS) -> np.ndarray:
    """Group index per fine bin so that each group holds about 1/``groups`` of the reference."""
    total = ref_counts.sum()
    if total == 0:
        return np.zeros(len(ref_counts), dtype=int)
    cum_before = np.concatenate([[0.0], np.cumsum(ref_counts)[:-1]]) / total
    return np.minimum((cum_before * groups).astype(int), groups - 1)


def grouped(counts: np.ndarray, group_of_bin: np.ndarray) -> np.ndarray:
    """Sum fine-bin counts (last axis) into their groups."""
    onehot = np.zeros((len(group_of_bin), int(group_of_bin.max()) + 1))
    onehot[np.arange(len(group_of_bin)), group_of_bin] = 1.0
    return np.asarray(counts, dtype=float) @ onehot


def _cdf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    n = counts.sum(axis=1)
    return np.divide(np.cumsum(counts, axis=1), n[:, None], out=np.zeros_like(counts),
                     where=n[:, None] > 0), n


def ks_many(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample KS statistic at the bin edges and its asymptotic p-value, per row of cur
    (``ref``: one vector, or one row per row of ``cur``)."""
    cdf_cur, m = _cdf(cur)
    cdf_ref, n = _cdf(ref)
    both = (m > 0) & (n > 0)
    d = np.where(both, np.max(np.abs(cdf_cur - cdf_ref), axis=1), 0.0)
    n_eff = np.divide(n * m, n + m, out=np.zeros_like(m), where=both)
    p = np.where(both, np.minimum(1.0, special.kolmogorov(np.sqrt(n_eff) * d)), 1.0)
    return d, p


def ks_binned(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic at the bin edges and its asymptotic p-value."""
    d, p = ks_many(np.asarray(ref_counts, dtype=float), cur_counts)
    return float(d[0]), float(p[0])


def pool_rare(
    ref: np.ndarray, cur: np.ndarray, min_expected: float = MIN_EXPECTED
) -> tuple[np.ndarray, np.ndarray]:
    """Per window, pool the categories the reference expects fewer than ``min_expected``
    times in that window into one extra bin (of both ``ref`` and ``cur``).

    The chi-square test is only valid with such pooling, and PSI over k sparse bins is
    inflated by sampling noise alone by about (k - 1) / rows: a 100-category feature over
    400 rows shows PSI near 0.25 with no drift at all.
    """
    cur = np.atleast_2d(np.asarray(cur, dtype=float))
    ref = np.broadcast_to(np.asarray(ref, dtype=float), cur.shape)
    n_ref = ref.sum(axis=1, keepdims=True)
    expected = np.divide(ref * cur.sum(axis=1, keepdims=True), n_ref,
                         out=np.zeros_like(cur), where=n_ref > 0)
    rare = expected < min_expected
    return (np.column_stack([np.where(rare, 0.0, ref), (ref * rare).sum(axis=1)]),
            np.column_stack([np.where(rare, 0.0, cur), (cur * rare).sum(axis=1)]))


def chi_square_many(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chi-square test of homogeneity of each row of ``cur`` with ``ref`` (empty bins dropped)."""
    cur = np.atleast_2d(np.asarray(cur, dtype=float))
    ref = np.broadcast_to(np.asarray(ref, dtype=float), cur.shape)
    col = ref + cur
    n_ref, n_cur = ref.sum(axis=1, keepdims=True), cur.sum(axis=1, keepdims=True)
    total = n_ref + n_cur
    exp_ref = np.divide(n_ref * col, total, out=np.zeros_like(col), where=total > 0)
    exp_cur = np.divide(n_cur * col, total, out=np.zeros_like(col), where=total > 0)
    terms = (np.divide((ref - exp_ref) ** 2, exp_ref, out=np.zeros_like(col), where=exp_ref > 0)
             + np.divide((cur - exp_cur) ** 2, exp_cur, out=np.zeros_like(col), where=exp_cur > 0))
    statistic = terms.sum(axis=1)
    dof = (col > 0).sum(axis=1) - 1
    valid = (dof > 0) & (n_ref[:, 0] > 0) & (n_cur[:, 0] > 0)
    p = np.where(valid, special.chdtrc(np.maximum(dof, 1), statistic), 1.0)
    return np.where(valid, statistic, 0.0), p


def chi_square(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity between two count vectors (empty bins dropped)."""
    s, p = chi_square_many(ref_counts, cur_counts)
    return float(s[0]), float(p[0])


def number_drift_many(
    ref_counts: np.ndarray, ref_missing: float | np.ndarray, cur_counts: np.ndarray,
    cur_missing: np.ndarray, *, groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PSI, KS D, KS p) per row of ``cur_counts`` for a numeric column.

    ``ref_counts`` is one vector or one row per window (then ``ref_missing`` is per window
    too, and ``groups`` — the PSI groups, by default the reference's deciles — should come
    from one fixed reference).
    """
    cur_counts = np.atleast_2d(np.asarray(cur_counts, dtype=float))
    ref_counts = np.asarray(ref_counts, dtype=float)
    if groups is None:
        groups = quantile_groups(ref_counts)
    ref_2d = np.atleast_2d(ref_counts)
    ref_g = np.column_stack([grouped(ref_2d, groups),
                             np.broadcast_to(np.asarray(ref_missing, dtype=float), len(ref_2d))])
    cur_g = np.column_stack([grouped(cur_counts, groups), np.asarray(cur_missing, dtype=float)])
    d, p = ks_many(ref_counts, cur_counts)
    return psi_many(ref_g, cur_g), d, p


def number_drift(
    feature: str, ref_counts: np.ndarray, ref_missing: int, cur_counts: np.ndarray,
    cur_missing: int, *, kind: str = "number",
) -> FeatureDrift:
    """PSI (reference-decile groups + a missing bin) and KS of a numeric feature."""
    value, d, p = number_drift_many(ref_counts, ref_missing, cur_counts, np.array([cur_missing]))
    return FeatureDrift(
        feature, kind, int(np.sum(cur_counts) + cur_missing), float(value[0]), float(d[0]),
        float(p[0]), "ks", _rate(ref_missing, ref_counts), _rate(cur_missing, cur_counts),
    )


def category_drift(
    feature: str, ref_counts: np.ndarray, ref_missing: int, cur_counts: np.ndarray,
    cur_missing: int,
) -> FeatureDrift:
    """PSI and chi-square of a categorical feature (missing is a category of its own; rare
    categories pooled as :func:`pool_rare` says)."""
    pooled_ref, pooled_cur = pool_rare(np.append(ref_counts, ref_missing),
                                       np.append(cur_counts, cur_missing))
    ref_all, cur_all = pooled_ref[0], pooled_cur[0]
    chi2, p = chi_square(ref_all, cur_all)
    return FeatureDrift(
        feature, "category", int(cur_all.sum()), psi(ref_all, cur_all), chi2, p, "chi2",
        _rate(ref_missing, ref_counts), _rate(cur_missing, cur_counts),
    )


def _rate(missing: int, counts: np.ndarray) -> float:
    total = float(np.sum(counts)) + missing
    return float(missing / total) if total else 0.0
