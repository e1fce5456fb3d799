"""The preference–utility front of one run: the best PrefOdds reachable within a utility budget.

Walking out from m = 0 in both directions, the largest PrefOdds before UtilOdds first drops below
U(0) − δ (a loss of utility costs, a gain does not); ties go to the smallest |m| (then the smaller m),
the least steering that reaches it. A fitted utility that dips below the budget and recovers further
out is not crossed: the recovery lies beyond a region the data say is broken, usually where the fit
extrapolates its own shape. ``best_fitted`` is the one answer to "the best m within a utility
budget" on fitted curves: ``steer.report`` reads it per run on the test split for its front table, a
tuning trial (``run.py`` with ``tune.split``) returns it on the validation split as the number the
sweeper maximises (``front_value``, from one split's rows only), and the judge's ``select=fit``
(``steer.judge.select.by_fit``) takes its m on the train fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from steer.analysis.fit import COLUMNS, curve, mean_curve

FINE = 4001
# How a front value is read: from the fitted curves (fit.json) on a fine grid, or from the swept points.
VALUES = ("fit", "swept")


@dataclass(frozen=True)
class Best:
    """The best PrefOdds within a utility budget, the m attaining it and the UtilOdds there."""

    pref: float
    m: float
    util: float


def budget_span(m, util, delta: float) -> tuple[int, int]:
    """Indices (lo, hi) of the m connected to m = 0 where ``util`` ≥ util(0) − ``delta``: the
    utility budget's region of m.

    ``m`` must be sorted and contain 0; the walk from 0 stops at the first m on each side whose
    utility has fallen more than ``delta`` below its value at 0.
    """
    m, util = np.asarray(m, dtype=np.float64), np.asarray(util, dtype=np.float64)
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    zero = np.flatnonzero(m == 0.0)
    if zero.size != 1 or np.any(np.diff(m) <= 0):
        raise ValueError("the utility budget: m must be strictly increasing and contain 0 once")
    z = int(zero[0])
    ok = util >= util[z] - delta
    lo = z
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    hi = z
    while hi < len(m) - 1 and ok[hi + 1]:
        hi += 1
    return lo, hi


def best_within(m, pref, util, delta: float) -> Best:
    """Largest ``pref`` over the utility budget's region of m (``budget_span``); ties go to the
    smallest |m| (then the smaller m)."""
    m, pref, util = (np.asarray(x, dtype=np.float64) for x in (m, pref, util))
    lo, hi = budget_span(m, util, delta)
    reach = np.arange(lo, hi + 1)
    top = reach[pref[reach] == np.max(pref[reach])]
    k = int(min(top, key=lambda i: (abs(m[i]), m[i])))
    return Best(float(pref[k]), float(m[k]), float(util[k]))


def fine_grid(m_min: float, m_max: float, points: int = FINE) -> np.ndarray:
    """``points`` evenly over [m_min, m_max] (ends included) and m = 0."""
    return np.union1d(np.linspace(m_min, m_max, points), [0.0])


def best_fitted(pref_params: dict, util_params: dict, m_min: float, m_max: float, delta: float) -> Best:
    """``best_within`` on the fitted curves (``steer.analysis.fit.curve``) over [m_min, m_max]."""
    ms = fine_grid(m_min, m_max)
    return best_within(ms, curve("pref", ms, pref_params), curve("util", ms, util_params), delta)


def front_value(frame: pd.DataFrame, fit_json: dict, split: str, delta: float, value: str = "fit") -> Best:
    """The best point of one run's front on ``split``: from the rows of ``frame`` (a
    ``sweep.parquet``) of that split alone and that split's fits in ``fit_json`` (``value="fit"``),
    or its swept mean points (``"swept"``). No other split's row or fit is read."""
    if value not in VALUES:
        raise ValueError(f"tune.value={value!r} is not one of {', '.join(VALUES)}")
    rows = frame[frame["split"] == split]
    curves = {kind: mean_curve(rows, split, column) for kind, column in COLUMNS.items()}
    m = curves["pref"]["m"].to_numpy()
    if value == "swept":
        return best_within(m, curves["pref"]["mean"], curves["util"]["mean"], delta)
    if split not in fit_json.get("pref", {}):
        raise ValueError(f"fit.json has no {split} fit (the sweep had no {split} rows when it was fitted)")
    params = {kind: fit_json[kind][split]["params"] for kind in COLUMNS}
    return best_fitted(params["pref"], params["util"], float(m.min()), float(m.max()), delta)
