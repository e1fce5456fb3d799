"""Choosing the multiplier m the judged generations use, with the reason recorded.

- ``fixed``: the configured m.
- ``validation`` (AxBench's protocol): the candidate with the best mean score on the validation
  half of the test prompts; the report uses the other half.
- ``fit`` (steer's own): from the run's fitted train curves (fit.json), the m within the swept range
  that maximises predicted PrefOdds while predicted UtilOdds stays within ``max_util_drop`` of its
  value at m = 0, walking out from m = 0 (``steer.analysis.front.best_fitted``: the same answer the
  front report and tuning give). No judge call is spent on the choice.
Ties go to the smallest |m| (then the smaller m): the least steering that reaches the best score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from steer.analysis.fit import curve
from steer.analysis.front import best_fitted
from steer.pairs import PairRecord

METHODS = ("fixed", "validation", "fit")


@dataclass(frozen=True)
class Choice:
    m: float
    method: str
    reason: str
    details: dict = field(default_factory=dict)


def split_records(records: list[PairRecord], select: str) -> tuple[list[PairRecord], list[PairRecord]]:
    """(validation, report): with ``select=validation`` the first half of the test pairs chooses m
    and the second half is reported; otherwise every pair is reported."""
    if select != "validation":
        return [], records
    if len(records) < 2:
        raise ValueError("judge.select=validation needs at least 2 test pairs (half validate, half report)")
    half = (len(records) + 1) // 2
    return records[:half], records[half:]


def fixed(m: float) -> Choice:
    return Choice(float(m), "fixed", f"m={float(m):g} fixed by judge.select.m")


def _order(m: float) -> tuple[float, float]:
    return (abs(m), m)


def by_validation(scores: Mapping[float, float], metric: str) -> Choice:
    """The candidate with the highest mean ``metric`` on the validation prompts."""
    valid = {float(m): float(s) for m, s in scores.items() if s is not None and not math.isnan(s)}
    if not valid:
        raise ValueError(f"judge.select=validation: no candidate has a {metric} score on the validation prompts")
    best = max(valid.values())
    m = min((m for m, s in valid.items() if s == best), key=_order)
    listing = ", ".join(f"{k:g}: {v:.3f}" for k, v in sorted(valid.items()))
    return Choice(
        m,
        "validation",
        f"m={m:g} has the best mean {metric} ({best:.3f}) on the validation half of the test prompts ({listing})",
        {"validation": {str(k): v for k, v in sorted(valid.items())}, "metric": metric},
    )


def by_fit(fit_json: Mapping, m_range: tuple[float, float], max_util_drop: float) -> Choice:
    """The m maximising the fitted train PrefOdds with fitted UtilOdds ≥ its value at 0 − ``max_util_drop``,
    walking out from m = 0 (``best_fitted``)."""
    lo, hi = float(min(m_range)), float(max(m_range))
    if max_util_drop < 0:
        raise ValueError(f"judge.select.max_util_drop must be >= 0, got {max_util_drop!r}")
    pref_params = fit_json["pref"]["train"]["params"]
    util_params = fit_json["util"]["train"]["params"]
    best = best_fitted(pref_params, util_params, lo, hi, max_util_drop)
    util0 = float(curve("util", [0.0], util_params)[0])
    pref0 = float(curve("pref", [0.0], pref_params)[0])
    return Choice(
        best.m,
        "fit",
        f"m={best.m:g} maximises the fitted train PrefOdds ({best.pref:.3f}, {pref0:.3f} at m=0) over "
        f"[{lo:g}, {hi:g}], walking out from m=0 while the fitted UtilOdds ({best.util:.3f}) stays within "
        f"judge.select.max_util_drop={max_util_drop:g} of its value at m=0 ({util0:.3f})",
        {"pred_pref": best.pref, "pred_pref_at_0": pref0, "pred_util": best.util, "pred_util_at_0": util0},
    )
