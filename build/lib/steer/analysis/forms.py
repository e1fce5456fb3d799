"""Is the paper's functional form needed? Simpler curves, information criteria, held-out multipliers.

A high R² of the validity-decay model (``steer.analysis.fit``) alone does not show that its mechanism
holds: a low-order polynomial may follow the same mean curve. This module holds the yardsticks:

- the alternatives (``ALTERNATIVES``), linear in their coefficients, each with at most as many
  parameters as the paper's form: polynomials of degree 2–5 in m, and the piecewise quadratic
  continuous at 0 (c + a₊m + b₊m² for m ≥ 0, c + a₋m + b₋m² for m < 0; 5 parameters);
- ``criteria``: AICc and BIC of a least-squares fit of n points with k free curve parameters
  (the noise variance counts as one more), AIC = n·ln(RSS/n) + 2k', AICc = AIC + 2k'(k'+1)/(n − k' − 1),
  BIC = n·ln(RSS/n) + k'·ln n with k' = k + 1; AICc is undefined (None) when n ≤ k' + 1;
- ``loo_r2``: leave-one-m-out cross-validated R² (each distinct m predicted by a fit to the others);
- ``pooled_r2``: a curve scored on every example's values at every m rather than on their mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# A fitting procedure: (m, y) -> a predictor m -> y.
Fitter = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class Polynomial:
    """y = Σ_j c_j m^j, j ≤ degree (in m scaled to [-1, 1], for conditioning)."""

    degree: int

    @property
    def k(self) -> int:
        return self.degree + 1

    def design(self, x: np.ndarray) -> np.ndarray:
        return np.vander(x, self.degree + 1, increasing=True)


@dataclass(frozen=True)
class PiecewiseQuadratic:
    """A quadratic on each side of m = 0 sharing the value at 0 (continuous, may kink there)."""

    @property
    def k(self) -> int:
        return 5

    def design(self, x: np.ndarray) -> np.ndarray:
        pos, neg = (x >= 0).astype(float), (x < 0).astype(float)
        return np.column_stack([np.ones_like(x), x * pos, x * x * pos, x * neg, x * x * neg])


ALTERNATIVES = {
    "poly2": Polynomial(2),
    "poly3": Polynomial(3),
    "poly4": Polynomial(4),
    "poly5": Polynomial(5),
    "pwquad": PiecewiseQuadratic(),
}


def linear_fitter(model) -> Fitter:
    """Least squares of one alternative; m is scaled by the max |m| of the points it is fitted to."""

    def fit(m: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        scale = float(np.max(np.abs(m))) or 1.0
        coef, *_ = np.linalg.lstsq(model.design(m / scale), y, rcond=None)
        return lambda x: model.design(np.asarray(x, dtype=np.float64) / scale) @ coef

    return fit


def r_squared(y, y_hat) -> float:
    """1 − SS_res / SS_tot; NaN when y has no variance (R² is undefined there). May be negative."""
    y = np.asarray(y, dtype=np.float64)
    y_hat = np.asarray(y_hat, dtype=np.float64)
    if y.shape != y_hat.shape:
        raise ValueError(f"r_squared: y has shape {y.shape}, the prediction {y_hat.shape}")
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y - y_hat) ** 2)) / ss_tot


def criteria(rss: float, n: int, k: int) -> dict[str, float | None]:
    """AICc and BIC of a least-squares fit (``k`` free curve parameters plus the noise variance)."""
    kk = k + 1
    fit_term = n * np.log(max(rss, 1e-300) / n)
    aicc = None if n - kk - 1 <= 0 else float(fit_term + 2 * kk + 2 * kk * (kk + 1) / (n - kk - 1))
    return {"aicc": aicc, "bic": float(fit_term + kk * np.log(n))}


def loo_r2(fitter: Fitter, m: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-m-out R²: every point predicted by ``fitter`` on the other points (m distinct)."""
    m, y = np.asarray(m, dtype=np.float64), np.asarray(y, dtype=np.float64)
    held = np.empty_like(y)
    for i in range(len(m)):
        keep = np.arange(len(m)) != i
        held[i] = fitter(m[keep], y[keep])(m[i : i + 1])[0]
    return r_squared(y, held)


def pooled_r2(m: np.ndarray, values: np.ndarray, predict: Callable[[np.ndarray], np.ndarray]) -> float:
    """R² of a curve on the individual examples: ``values`` [examples, m], every (example, m) a point."""
    values = np.asarray(values, dtype=np.float64)
    prediction = np.broadcast_to(predict(np.asarray(m, dtype=np.float64)), values.shape)
    return r_squared(values.ravel(), prediction.ravel())


def compare(m: np.ndarray, y: np.ndarray, max_params: int) -> dict[str, dict]:
    """Every alternative with at most ``max_params`` parameters fitted to (m, y): its parameter
    count, R², leave-one-m-out R², AICc and BIC (alternatives with fewer than k + 2 points are left out)."""
    out = {}
    for name, model in ALTERNATIVES.items():
        if model.k > max_params or len(m) < model.k + 2:
            continue
        fitter = linear_fitter(model)
        predicted = fitter(m, y)(m)
        rss = float(np.sum((y - predicted) ** 2))
        out[name] = {"params": model.k, "r2": r_squared(y, predicted), "cv_r2": loo_r2(fitter, m, y)}
        out[name] |= criteria(rss, len(m), model.k)
    return out


def verdict(paper: dict, alternatives: dict[str, dict]) -> tuple[str, str]:
    """(the preferred model by AICc, the comparison in words): ``paper`` and each alternative carry
    ``aicc`` (None: undefined) and ``cv_r2``."""
    scored = {"paper": paper, **alternatives}
    defined = {name: entry["aicc"] for name, entry in scored.items() if entry.get("aicc") is not None}
    if "paper" not in defined or len(defined) < 2:
        return "", "AICc undefined (too few points for the parameters): no comparison"
    best = min(defined, key=defined.get)
    rival = min((n for n in defined if n != "paper"), key=defined.get)
    gap = defined[rival] - defined["paper"]
    if best == "paper":
        return best, f"the paper's form is preferred (AICc {gap:.1f} below {rival})"
    return best, f"{best} is preferred (AICc {-gap:.1f} below the paper's form)"


def fit_alternative(name: str, m, y) -> Callable[[np.ndarray], np.ndarray]:
    """The alternative ``name`` (a key of ``ALTERNATIVES``) fitted to (m, y), as a predictor."""
    return linear_fitter(ALTERNATIVES[name])(np.asarray(m, dtype=np.float64), np.asarray(y, dtype=np.float64))
