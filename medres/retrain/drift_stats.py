"""Comparing one quantity between two cohorts, for :mod:`medres.retrain.drift`.

A categorical column becomes a :class:`Mix` (shares per value, χ² test of homogeneity);
per-scan values become a :class:`Shift` (median or mean, two-sample Kolmogorov–Smirnov
test) and a flag becomes a rate :class:`Shift` (Fisher's exact test). ``p_text``,
``num_text`` and ``test_text`` write their numbers for the findings and ``drift.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats


@dataclass
class Mix:
    """Shares of one categorical column in both cohorts. ``table``: value, old_n,
    old_share, new_n, new_share, difference (new − old share); ``p_value``: χ² test of
    homogeneity (NaN with fewer than two values or an empty side)."""

    name: str
    table: pd.DataFrame
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {"p_value": self.p_value, "values": self.table.to_dict("records")}


@dataclass
class Shift:
    """One quantity in both cohorts: ``old``, ``new`` (the ``stat`` — median or mean — of
    per-scan values, or a rate when ``stat`` is empty) and the p-value of ``test``
    (KS, Fisher; NaN and "" when not tested). ``ks_d``: the KS statistic, the largest
    gap between the two cumulative distributions (0 to 1): the size of a KS shift."""

    name: str
    old: float
    new: float
    p_value: float = math.nan
    test: str = "KS"
    stat: str = "median"
    ks_d: float = math.nan


def mix(name: str, old: pd.Series, new: pd.Series, order: list[str] | None = None) -> Mix:
    """Counts and shares per value (missing values as ``unknown``) and a χ² p-value."""
    o, n = (s.astype(object).where(s.notna(), "unknown").astype(str) for s in (old, new))
    seen = set(o) | set(n)
    first = [v for v in order or [] if v in seen]
    values = first + sorted(seen - set(first), key=_natural)
    counts = np.array([[int((s == v).sum()) for v in values] for s in (o, n)])
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = counts / totals
    p = math.nan
    if len(values) > 1 and totals.min() > 0:
        p = float(stats.chi2_contingency(counts).pvalue)
    table = pd.DataFrame(
        {
            "value": values,
            "old_n": counts[0],
            "old_share": shares[0],
            "new_n": counts[1],
            "new_share": shares[1],
            "difference": shares[1] - shares[0],
        }
    )
    return Mix(name, table, p)


def _natural(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def shift(name: str, old, new, test: bool, stat: str = "median") -> Shift:
    """``stat`` (median or mean) of each side's finite values; a two-sample KS test."""
    o, n = (pd.to_numeric(pd.Series(v), errors="coerce").to_numpy(float) for v in (old, new))
    o, n = o[np.isfinite(o)], n[np.isfinite(n)]
    agg = np.median if stat == "median" else np.mean
    d = p = math.nan
    if test and len(o) and len(n):
        result = stats.ks_2samp(o, n)
        d, p = float(result.statistic), float(result.pvalue)
    old_v = float(agg(o)) if len(o) else math.nan
    new_v = float(agg(n)) if len(n) else math.nan
    return Shift(name, old_v, new_v, p, "KS" if test else "", stat, d)


def rate_shift(name: str, old: pd.Series, new: pd.Series) -> Shift:
    """Share of flagged scans on each side; Fisher's exact test on the 2×2 table."""
    o, n = old.dropna().astype(bool), new.dropna().astype(bool)
    table = [[int(o.sum()), int((~o).sum())], [int(n.sum()), int((~n).sum())]]
    p = float(stats.fisher_exact(table).pvalue) if len(o) and len(n) else math.nan
    return Shift(name, float(o.mean()), float(n.mean()), p, "Fisher", "")


def test_text(s: Shift) -> str:
    if not s.test:
        return "—"
    size = "" if s.ks_d != s.ks_d else f"D = {s.ks_d:.2f}, "
    return f"{s.test} {size}{p_text(s.p_value)}"


def p_text(p: float) -> str:
    if p != p:
        return "—"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def num_text(x: float) -> str:
    return "—" if x != x else f"{x:.4g}"
