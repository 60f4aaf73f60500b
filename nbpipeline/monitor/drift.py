"""Drift statistics on binned distributions: PSI, KS (numbers), chi-square (categories).

Everything here works on *counts per bin*, never on raw rows, so the monitor can bin a
million logged predictions inside SQLite and only move small histograms into Python.

Numbers are binned on a fine equal-width grid fitted to the reference (see
:mod:`nbpipeline.monitor.reference`): the KS statistic is evaluated at every grid edge
(``GRID_BINS`` of them, so it is exact up to the grid's resolution) and PSI uses about ten
groups of adjacent grid bins holding equal reference mass (the usual decile PSI). The
missing-value share is a bin of its own in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

PSI_GROUPS = 10
PSI_EPSILON = 1e-4


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


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    p = _shares(ref_counts)
    q = _shares(cur_counts)
    return float(np.sum((q - p) * np.log(q / p)))


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    shares = counts / total if total else np.zeros_like(counts, dtype=float)
    shares = np.clip(shares, PSI_EPSILON, None)
    return shares / shares.sum()


def quantile_groups(ref_counts: np.ndarray, groups: int = PSI_GROUPS) -> np.ndarray:
    """Group index per fine bin so that each group holds about 1/``groups`` of the reference."""
    total = ref_counts.sum()
    if total == 0:
        return np.zeros(len(ref_counts), dtype=int)
    cum_before = np.concatenate([[0.0], np.cumsum(ref_counts)[:-1]]) / total
    return np.minimum((cum_before * groups).astype(int), groups - 1)


def grouped(counts: np.ndarray, group_of_bin: np.ndarray) -> np.ndarray:
    """Sum fine-bin counts into their groups."""
    return np.bincount(group_of_bin, weights=counts, minlength=int(group_of_bin.max()) + 1)


def ks_binned(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic at the bin edges and its asymptotic p-value."""
    n, m = float(ref_counts.sum()), float(cur_counts.sum())
    if n == 0 or m == 0:
        return 0.0, 1.0
    d = float(np.max(np.abs(np.cumsum(ref_counts) / n - np.cumsum(cur_counts) / m)))
    n_eff = n * m / (n + m)
    return d, float(min(1.0, special.kolmogorov(np.sqrt(n_eff) * d)))


def chi_square(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity between two count vectors (empty bins dropped)."""
    keep = (ref_counts + cur_counts) > 0
    table = np.vstack([ref_counts[keep], cur_counts[keep]]).astype(float)
    rows = table.sum(axis=1, keepdims=True)
    if table.shape[1] < 2 or rows.min() == 0:
        return 0.0, 1.0
    expected = rows * table.sum(axis=0, keepdims=True) / rows.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(stats.chi2.sf(statistic, table.shape[1] - 1))


def number_drift(
    feature: str, ref_counts: np.ndarray, ref_missing: int, cur_counts: np.ndarray,
    cur_missing: int, *, kind: str = "number",
) -> FeatureDrift:
    """PSI (reference-decile groups + a missing bin) and KS of a numeric feature."""
    groups = quantile_groups(ref_counts)
    ref_g = np.append(grouped(ref_counts, groups), ref_missing)
    cur_g = np.append(grouped(cur_counts, groups), cur_missing)
    d, p = ks_binned(ref_counts, cur_counts)
    return FeatureDrift(
        feature, kind, int(cur_counts.sum() + cur_missing), psi(ref_g, cur_g), d, p, "ks",
        _rate(ref_missing, ref_counts), _rate(cur_missing, cur_counts),
    )


def category_drift(
    feature: str, ref_counts: np.ndarray, ref_missing: int, cur_counts: np.ndarray,
    cur_missing: int,
) -> FeatureDrift:
    """PSI and chi-square of a categorical feature (missing is a category of its own)."""
    ref_all = np.append(ref_counts, ref_missing).astype(float)
    cur_all = np.append(cur_counts, cur_missing).astype(float)
    chi2, p = chi_square(ref_all, cur_all)
    return FeatureDrift(
        feature, "category", int(cur_all.sum()), psi(ref_all, cur_all), chi2, p, "chi2",
        _rate(ref_missing, ref_counts), _rate(cur_missing, cur_counts),
    )


def _rate(missing: int, counts: np.ndarray) -> float:
    total = float(counts.sum()) + missing
    return float(missing / total) if total else 0.0
