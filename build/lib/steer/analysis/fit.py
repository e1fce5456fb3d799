"""The validity-decay model of the paper and its fit to the mean log-odds curve over m.

Decay, piecewise rational quadratic, one branch per sign of m::

    D(m) = (1 + (m − m_pos)² / L_pos)^(−p_pos)    m ≥ 0
    D(m) = (1 + (m − m_neg)² / L_neg)^(−p_neg)    m < 0

Preference: PrefOdds(m) ≈ (alpha·m + beta)·D(m) + b  (parameters ``PREF_PARAMS``).
Utility:    UtilOdds(m) ≈ beta·D_u(m) + b             (``UTIL_PARAMS``: the paper's β_u and b_u,
stored as ``beta`` and ``b``; D_u has its own six decay parameters). The model, the fit and the R²
tables are described in docs/fit-and-reports.md.

The parameters are held to their meaning (Eq. 12): the centres are where the swept line crosses the
manifold, so 0 ≤ m_pos ≤ max m and min m ≤ m_neg ≤ 0; validity multiplies utility, so β_u ≥ 0;
the decay is one the grid can resolve; the linear terms stay within a few times the data's range
(``LINEAR_RANGE``), so no β ≈ 1e4 cancelled by b ≈ −1e4 can stand in for a flat D. A fit whose
optimum lies on one of these bounds says so (``Fit.at_bound``): its parameters there are the
bound's, not the data's.

Fitting (``fit_curve``) minimises the mean squared error on the points given (the mean curve over
examples) with scipy's SLSQP and analytic gradients, in normalised units (m / max|m|, y
standardised; the parameters are mapped back). The decay is optimised as (centre, log width, log p)
per branch, with width = √(L / 2p) the peak's curvature scale (D ≈ 1 − (m − centre)² / (2·width²)
near its centre) and L = 2·p·width²; bounds, in units of max|m|:
- centres in [0, max m] and [min m, 0] (``CENTRE_EPS`` from 0, where the continuity constraint's
  gradient vanishes);
- widths between the smallest spacing of the swept m (a sharper decay is not determined by the data
  and would thread spikes between the points) and ``WIDTH_MAX`` (a wider one is a parabola over the
  data: β and b then trade against each other);
- p in ``POWER_RANGE`` (beyond 10 the branch is a Gaussian to within what a grid can tell);
- continuity of D at m = 0 is an equality constraint (the branches may meet at an angle);
- between two neighbouring swept points the curve stays within its own values at those two points,
  widened by ``ENVELOPE`` (10 %) of the data's range (inequality constraints on points half the
  minimum width apart, so no peak fits between them);
- restarts are deterministic: ``SCREEN`` decays drawn with ``seed`` (made continuous, linear
  parameters solved by least squares and clipped to their bounds) are ranked by error, and SLSQP
  starts from the ``restarts`` best mutually distinct ones plus one neutral decay (and ``start``, a
  previous fit, when given); the best feasible result wins.

Degenerate input, documented:
- NaN or ±inf in m or y, mismatched shapes, or fewer distinct m than parameters: ``FitError``
  (a ``ValueError``) naming the problem, before scipy is called.
- fewer distinct m than parameters + 2: the fit is made (a front or a judge can still read it) but its
  R² is withheld (NaN, ``Fit.withheld`` says why): with as many points as parameters R² is 1 by
  construction.
- a flat curve (all y equal): no fit is attempted; the result is the constant b = y with
  alpha = beta = 0, a neutral decay (m± = 0, L± = 1, p± = 1), ``r2`` NaN (R² is undefined when
  the data have no variance) and ``degenerate = "flat"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from steer.analysis.forms import compare, criteria, fit_alternative, loo_r2, pooled_r2, r_squared, verdict

DECAY_PARAMS = ("m_pos", "m_neg", "L_pos", "L_neg", "p_pos", "p_neg")
PREF_PARAMS = ("alpha", "beta", "b", *DECAY_PARAMS)
UTIL_PARAMS = ("beta", "b", *DECAY_PARAMS)
PARAMS = {"pref": PREF_PARAMS, "util": UTIL_PARAMS}
# The optimised coordinates, as ``Fit.at_bound`` names them: the decay by centre, width, power.
DECAY_COORDS = ("m_pos", "m_neg", "width_pos", "width_neg", "p_pos", "p_neg")
COORDS = {kind: (*names[: len(names) - 6], *DECAY_COORDS) for kind, names in PARAMS.items()}
# The sweep.parquet column each kind of curve is fitted to.
COLUMNS = {"pref": "pref_odds", "util": "util_odds"}
# The splits every run has; ``validation`` (``dataset.validation``) is fitted too when the sweep has it.
SPLITS = ("train", "test")
ALL_SPLITS = ("train", "validation", "test")
# Thresholds of the slope ratio s(m)/s(0) that end the linear region and start the convergence one.
REGION_THRESHOLDS = (0.5, 0.1)
# Candidate decays ranked before the SLSQP restarts.
SCREEN = 2000
NEUTRAL_DECAY = {"m_pos": 0.0, "m_neg": 0.0, "L_pos": 1.0, "L_neg": 1.0, "p_pos": 1.0, "p_neg": 1.0}

# Bounds (normalised units: m / max|m|, y standardised). Centres keep CENTRE_EPS from 0.
CENTRE_EPS = 1e-3
WIDTH_MAX = 2.0
POWER_RANGE = (0.1, 10.0)
# |beta| (β_u in [0, ·]) ≤ LINEAR_RANGE × the data's range, b within that of the data, |alpha| ≤ that
# range over the smallest spacing of the swept m (no steeper than the grid can show).
LINEAR_RANGE = 3.0
# A coordinate within this share of its bound interval from a bound is "at the bound".
BOUND_TOL = 1e-3
# Starting centres are never at the bound CENTRE_EPS: near-centred starts sit at ±_NEAR_ZERO.
_NEAR_ZERO = 0.05
# Screened starts must differ from each other by more than this in some decay coordinate.
_DISTINCT = np.array([0.25, 0.25, 0.5, 0.5, 1.0, 1.0])
_FEASIBLE = 1e-6
# Between two neighbouring swept points the fitted curve stays within its values there widened by
# ENVELOPE × the range of the data (checked every half minimum width: no peak fits between).
ENVELOPE = 0.1
_MAX_CHECKS = 200
# SLSQP's stopping tolerance on the (normalised) loss: tighter than scipy's 1e-6, which stops the
# restarts at slightly different points of the same flat optimum (R² apart in the 4th decimal).
_FTOL = 1e-10


class FitError(ValueError):
    """Input the model cannot be fitted to; the message says what is wrong."""


def branch(m, centre: float, L: float, p: float) -> np.ndarray:
    """One branch of D: (1 + (m − centre)² / L)^(−p)."""
    return (1.0 + (np.asarray(m, dtype=np.float64) - centre) ** 2 / L) ** (-p)


def decay(m, m_pos: float, m_neg: float, L_pos: float, L_neg: float, p_pos: float, p_neg: float) -> np.ndarray:
    """D(m), the piecewise rational quadratic validity decay."""
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 0, branch(m, m_pos, L_pos, p_pos), branch(m, m_neg, L_neg, p_neg))


def curve(kind: str, m, params: Mapping[str, float]) -> np.ndarray:
    """The model curve of ``kind`` ("pref" or "util") at ``m``."""
    d = decay(m, *(params[k] for k in DECAY_PARAMS))
    if kind == "pref":
        return (params["alpha"] * np.asarray(m, dtype=np.float64) + params["beta"]) * d + params["b"]
    if kind == "util":
        return params["beta"] * d + params["b"]
    raise ValueError(f"kind must be 'pref' or 'util', got {kind!r}")


def width(L: float, p: float) -> float:
    """√(L / 2p): the curvature scale of a branch's peak, D ≈ 1 − (m − centre)² / (2·width²)."""
    return float(np.sqrt(L / (2.0 * p)))


@dataclass(frozen=True)
class Fit:
    """A fitted curve: its kind, parameters (names of ``PARAMS[kind]``) and R² on the fitted data.

    ``at_bound``: the optimised coordinates (``COORDS[kind]``) whose optimum lies on a bound, "lower"
    or "upper"; ``points``: distinct m fitted; ``withheld``: why ``r2`` is NaN although a fit was made."""

    kind: str
    params: dict[str, float]
    r2: float
    degenerate: str | None = None
    at_bound: dict[str, str] = field(default_factory=dict)
    points: int = 0
    withheld: str | None = None

    def predict(self, m) -> np.ndarray:
        return curve(self.kind, m, self.params)

    def score(self, m, y) -> float:
        """R² of this fit on other data (e.g. the test curve of a train fit)."""
        m, y = _checked(m, y, self.kind, need=1)
        return r_squared(y, self.predict(m))


def fit_from_json(kind: str, entry: Mapping) -> Fit:
    """A fit as ``fit.json`` stores it (an entry of ``SweepFit.to_json``)."""
    r2 = entry["r2"]
    return Fit(
        kind,
        dict(entry["params"]),
        float("nan") if r2 is None else float(r2),
        entry.get("degenerate"),
        dict(entry.get("at_bound", {})),
        int(entry.get("points", 0)),
        entry.get("r2_withheld"),
    )


def assert_meaningful(fit: Fit) -> None:
    """The parameters mean what Eq. 12 says: m_pos ≥ 0 ≥ m_neg, L± and p± > 0, β_u ≥ 0 (a bug otherwise)."""
    p = fit.params
    problems = [
        text
        for text, bad in (
            (f"m_pos = {p['m_pos']} < 0", p["m_pos"] < 0),
            (f"m_neg = {p['m_neg']} > 0", p["m_neg"] > 0),
            (f"L or p not positive: {p}", min(p["L_pos"], p["L_neg"], p["p_pos"], p["p_neg"]) <= 0),
            (f"beta_u = {p['beta']} < 0", fit.kind == "util" and p["beta"] < 0),
        )
        if bad
    ]
    if problems:
        raise AssertionError(f"{fit.kind} fit out of its meaning: {'; '.join(problems)}")


def check_restarts(restarts: int) -> None:
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
        raise ValueError(f"fit.restarts must be a positive integer, got {restarts!r}")


def fit_curve(
    kind: str,
    m,
    y,
    restarts: int = 16,
    seed: int = 0,
    progress: bool = False,
    label: str = "",
    start: Mapping[str, float] | None = None,
    screen: int = SCREEN,
) -> Fit:
    """Fit the ``kind`` model ("pref" or "util") to points (m, y), usually the mean curve over examples.
    ``progress``: a bar over the SLSQP restarts (``label`` names the curve in it); ``start``: the
    parameters of a previous fit (e.g. of the full data, for a bootstrap refit) as one more start;
    ``screen``: how many candidate decays are ranked for the restarts (0: none, only the neutral
    decay and ``start``)."""
    # The linear algebra here is tiny: BLAS threads only add wake-up overhead (4x slower on a busy CPU).
    with threadpool_limits(limits=1):
        fit = _fit_curve(kind, m, y, restarts, seed, progress, label, start, screen)
    assert_meaningful(fit)
    return fit


def _fit_curve(kind, m, y, restarts, seed, progress, label, start, screen) -> Fit:
    if kind not in PARAMS:
        raise ValueError(f"kind must be 'pref' or 'util', got {kind!r}")
    check_restarts(restarts)
    names = PARAMS[kind]
    m, y = _checked(m, y, kind, need=len(names))
    points = len(np.unique(m))
    if np.ptp(y) <= 1e-12 * max(1.0, abs(float(y.mean()))):
        flat = {"alpha": 0.0, "beta": 0.0, "b": float(y.mean()), **NEUTRAL_DECAY}
        return Fit(kind, {k: flat[k] for k in names}, float("nan"), degenerate="flat", points=points)

    scales = (float(np.max(np.abs(m))), float(y.mean()), float(y.std()))
    x, t = m / scales[0], (y - scales[1]) / scales[2]
    min_width = min(float(np.min(np.diff(np.unique(x)))), WIDTH_MAX)
    bounds = np.array(_bounds(kind, x, t, min_width))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, jac = _model(kind, x, theta)
        r = value - t
        return float(np.mean(r * r)), 2.0 * jac.T @ r / len(x)

    envelope, envelope_jac = _envelope_constraint(kind, x, t, min_width)
    constraints = [
        {"type": "eq", "fun": _continuity, "jac": _continuity_jac},
        {"type": "ineq", "fun": envelope, "jac": envelope_jac},
    ]
    best: tuple[float, np.ndarray] | None = None
    starts = [
        np.clip(np.concatenate([_linear_fit(kind, x, t, u), u]), *bounds.T)
        for u in _starting_decays(kind, x, t, bounds, restarts, seed, screen)
    ]
    if start is not None:
        starts.insert(0, np.clip(_normalise(kind, start, *scales), *bounds.T))
    for theta0 in tqdm(starts, desc=f"fit {label or kind}", unit="restart", disable=not progress, leave=False):
        with np.errstate(all="ignore"):
            options = {"maxiter": 1000, "ftol": _FTOL}
            theta = minimize(
                loss, theta0, jac=True, method="SLSQP", bounds=bounds, constraints=constraints, options=options
            ).x
        theta = np.clip(theta, *bounds.T)
        value = loss(theta)[0]
        feasible = abs(_continuity(theta)) <= _FEASIBLE and np.all(envelope(theta) >= -1e-6)
        if np.isfinite(value) and feasible and (best is None or value < best[0]):
            best = (value, theta)
    if best is None:
        raise FitError(
            f"{kind} fit: none of {len(starts)} starts met the constraints (continuity at m = 0, "
            "no excursion between points)"
        )
    params = _denormalise(kind, best[1], *scales)
    at_bound = _at_bound(kind, best[1], bounds)
    if points < len(names) + 2:
        reason = (
            f"{points} distinct m for {len(names)} parameters: R² needs at least {len(names) + 2} "
            "(with as many points as parameters it is 1 by construction)"
        )
        return Fit(kind, params, float("nan"), at_bound=at_bound, points=points, withheld=reason)
    return Fit(kind, params, r_squared(y, curve(kind, m, params)), at_bound=at_bound, points=points)


def _bounds(kind: str, x: np.ndarray, t: np.ndarray, min_width: float) -> list[tuple[float, float]]:
    """Bounds of the optimised coordinates (``COORDS[kind]``) in normalised units."""
    spread = LINEAR_RANGE * float(np.ptp(t))
    level = (float(t.min()) - spread, float(t.max()) + spread)
    slope = spread / min_width
    linear = [(-slope, slope), (-spread, spread), level] if kind == "pref" else [(0.0, spread), level]
    pos_end = max(float(x.max()), 2 * CENTRE_EPS)
    neg_end = min(float(x.min()), -2 * CENTRE_EPS)
    log_width = (np.log(min_width), np.log(WIDTH_MAX))
    log_power = tuple(np.log(POWER_RANGE))
    return [*linear, (CENTRE_EPS, pos_end), (neg_end, -CENTRE_EPS), log_width, log_width, log_power, log_power]


def _at_bound(kind: str, theta: np.ndarray, bounds: np.ndarray) -> dict[str, str]:
    out = {}
    for name, value, (lo, hi) in zip(COORDS[kind], theta, bounds, strict=True):
        tol = BOUND_TOL * (hi - lo)
        if value - lo <= tol:
            out[name] = "lower"
        elif hi - value <= tol:
            out[name] = "upper"
    return out


def _envelope_constraint(kind: str, x: np.ndarray, t: np.ndarray, min_width: float):
    """(g, dg/dθ) of the inequality g(θ) ≥ 0 that keeps the model curve, between neighbouring
    points, within the band their own values span (plus a margin)."""
    fine, left, right = _envelope(x, step=max(min_width / 2, np.ptp(x) / _MAX_CHECKS))
    margin = ENVELOPE * float(np.ptp(t))

    def envelope(theta: np.ndarray) -> np.ndarray:
        value = _model(kind, fine, theta)[0]
        a, b = _model(kind, left, theta)[0], _model(kind, right, theta)[0]
        return np.concatenate([value - np.minimum(a, b) + margin, np.maximum(a, b) + margin - value])

    def envelope_jac(theta: np.ndarray) -> np.ndarray:
        value_jac = _model(kind, fine, theta)[1]
        (a, a_jac), (b, b_jac) = _model(kind, left, theta), _model(kind, right, theta)
        low_jac = np.where((a <= b)[:, None], a_jac, b_jac)
        high_jac = np.where((a > b)[:, None], a_jac, b_jac)
        return np.concatenate([value_jac - low_jac, high_jac - value_jac])

    return envelope, envelope_jac


def _envelope(x: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points ``step`` apart between the swept x, and for each the swept x on its left and right:
    between them the curve must stay within its own values there, widened by ENVELOPE."""
    xs = np.unique(x)
    fine = np.linspace(xs[0], xs[-1], int(np.ceil((xs[-1] - xs[0]) / step)) + 1)
    interval = np.clip(np.searchsorted(xs, fine, side="right") - 1, 0, len(xs) - 2)
    return fine, xs[interval], xs[interval + 1]


def _checked(m, y, kind: str, need: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(m, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if m.ndim != 1 or m.shape != y.shape:
        raise FitError(f"{kind} fit: m and y must be 1-D of one length, got shapes {m.shape} and {y.shape}")
    for name, values in (("m", m), ("y", y)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise FitError(f"{kind} fit: {name} is not finite (NaN or inf) at m = {m[bad][:5].tolist()}")
    distinct = len(np.unique(m))
    if distinct < need:
        raise FitError(
            f"{kind} fit: {distinct} distinct multipliers m, the model has {need} parameters: "
            f"sweep at least {need} values of m"
        )
    return m, y


def _lengths(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, p) of both branches from the decay coordinates u: L = 2·p·width²."""
    power = np.exp(u[4:6])
    return 2.0 * power * np.exp(2.0 * u[2:4]), power


def _decay_jac(x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D(x) and dD/du for u = (m_pos, m_neg, log width_pos, log width_neg, log p_pos, log p_neg)."""
    (l_pos, l_neg), (p_pos, p_neg) = _lengths(u)
    pos = x >= 0
    centre = np.where(pos, u[0], u[1])
    length = np.where(pos, l_pos, l_neg)
    power = np.where(pos, p_pos, p_neg)
    z = x - centre
    base = 1.0 + z * z / length
    d = base ** (-power)
    d_centre = 2.0 * power * z * d / (length * base)
    d_log_width = 2.0 * power * z * z * d / (length * base)
    d_log_power = d * power * (z * z / (length * base) - np.log(base))
    jac = np.zeros((len(x), 6))
    for col, values in ((0, d_centre), (2, d_log_width), (4, d_log_power)):
        jac[:, col] = np.where(pos, values, 0.0)
        jac[:, col + 1] = np.where(pos, 0.0, values)
    return d, jac


def _model(kind: str, x: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The normalised model curve and its Jacobian in theta = (linear parameters, decay u)."""
    n_lin = len(PARAMS[kind]) - len(DECAY_PARAMS)
    d, d_jac = _decay_jac(x, theta[n_lin:])
    if kind == "pref":
        alpha, beta, b = theta[:3]
        scale = alpha * x + beta
        jac = np.column_stack([x * d, d, np.ones_like(x), scale[:, None] * d_jac])
        return scale * d + b, jac
    beta, b = theta[:2]
    return beta * d + b, np.column_stack([d, np.ones_like(x), beta * d_jac])


def _continuity(theta: np.ndarray) -> float:
    """log D(0⁺) − log D(0⁻) in the optimised coordinates: zero when the branches meet at m = 0."""
    u = theta[-6:]
    (l_pos, l_neg), (p_pos, p_neg) = _lengths(u)
    return float(p_neg * np.log1p(u[1] ** 2 / l_neg) - p_pos * np.log1p(u[0] ** 2 / l_pos))


def _continuity_jac(theta: np.ndarray) -> np.ndarray:
    u = theta[-6:]
    (l_pos, l_neg), (p_pos, p_neg) = _lengths(u)
    a_pos, a_neg = u[0] ** 2 / l_pos, u[1] ** 2 / l_neg
    grad = np.zeros(len(theta))
    grad[-6:] = [
        -p_pos * 2.0 * u[0] / (l_pos * (1.0 + a_pos)),
        p_neg * 2.0 * u[1] / (l_neg * (1.0 + a_neg)),
        2.0 * p_pos * a_pos / (1.0 + a_pos),
        -2.0 * p_neg * a_neg / (1.0 + a_neg),
        -p_pos * (np.log1p(a_pos) - a_pos / (1.0 + a_pos)),
        p_neg * (np.log1p(a_neg) - a_neg / (1.0 + a_neg)),
    ]
    return grad


def _starting_decays(
    kind: str, x: np.ndarray, t: np.ndarray, bounds: np.ndarray, restarts: int, seed: int, screen: int
) -> list:
    """A neutral decay, then the ``restarts`` best distinct decays of a seeded screen.

    Screened decays have positive-branch widths and both powers log-uniform within their bounds;
    half of them are centred near 0 (±``_NEAR_ZERO``), the others anywhere in the centres' bounds;
    the negative branch's width is solved from the continuity constraint.
    """
    low, high = bounds[-6:].T
    neutral = np.array([min(_NEAR_ZERO, high[0]), max(-_NEAR_ZERO, low[1]), 0.0, 0.0, 0.0, 0.0])
    neutral[2:4] = np.clip(np.log(0.5), low[2], high[2])
    if screen == 0:
        return [neutral]
    rng = np.random.default_rng(seed)
    n = screen
    centre = np.column_stack([rng.uniform(low[0], high[0], n), rng.uniform(low[1], high[1], n)])
    centre[: n // 2] = [min(_NEAR_ZERO, high[0]), max(-_NEAR_ZERO, low[1])]
    log_width = rng.uniform(low[2], high[2], n)
    log_power = rng.uniform(low[4], high[4], (n, 2))
    with np.errstate(all="ignore"):
        power = np.exp(log_power)
        drop = power[:, 0] * np.log1p(centre[:, 0] ** 2 / (2 * power[:, 0] * np.exp(2 * log_width)))
        width_neg = np.abs(centre[:, 1]) / np.sqrt(2 * power[:, 1] * np.expm1(drop / power[:, 1]))
        u = np.column_stack([centre, log_width, np.log(width_neg), log_power])
        keep = np.all(np.isfinite(u) & (u >= low) & (u <= high), axis=1)
    u = u[keep]
    lin_bounds = bounds[:-6]
    errors = []
    for row in u:
        coef = np.clip(_linear_fit(kind, x, t, row), *lin_bounds.T)
        errors.append(np.mean((_design(kind, x, row) @ coef - t) ** 2))
    starts = [neutral]
    for i in np.argsort(errors):
        if len(starts) > restarts:
            break
        if all(np.any(np.abs(u[i] - s) > _DISTINCT) for s in starts[1:]):
            starts.append(u[i])
    return starts


def _design(kind: str, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    (l_pos, l_neg), (p_pos, p_neg) = _lengths(u)
    d = decay(x, u[0], u[1], l_pos, l_neg, p_pos, p_neg)
    columns = [x * d, d, np.ones_like(x)] if kind == "pref" else [d, np.ones_like(x)]
    return np.stack(columns, axis=1)


def _linear_fit(kind: str, x: np.ndarray, t: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The linear parameters that fit best for a fixed decay u (least squares)."""
    coef, *_ = np.linalg.lstsq(_design(kind, x, u), t, rcond=None)
    return coef


def _normalise(kind: str, params: Mapping[str, float], m_scale: float, y_mean: float, y_scale: float) -> np.ndarray:
    """The optimised coordinates of ``params`` (``_denormalise``'s inverse)."""
    p = params
    decay_u = [
        p["m_pos"] / m_scale,
        p["m_neg"] / m_scale,
        np.log(width(p["L_pos"], p["p_pos"]) / m_scale),
        np.log(width(p["L_neg"], p["p_neg"]) / m_scale),
        np.log(p["p_pos"]),
        np.log(p["p_neg"]),
    ]
    linear = [p["beta"] / y_scale, (p["b"] - y_mean) / y_scale]
    if kind == "pref":
        linear.insert(0, p["alpha"] * m_scale / y_scale)
    return np.array([*linear, *decay_u], dtype=np.float64)


def _denormalise(kind: str, theta: np.ndarray, m_scale: float, y_mean: float, y_scale: float) -> dict[str, float]:
    """Map parameters of the normalised problem back to m and log-odds units."""
    (l_pos, l_neg), (p_pos, p_neg) = _lengths(theta[-6:])
    params = {
        "m_pos": theta[-6] * m_scale,
        "m_neg": theta[-5] * m_scale,
        "L_pos": l_pos * m_scale**2,
        "L_neg": l_neg * m_scale**2,
        "p_pos": p_pos,
        "p_neg": p_neg,
    }
    if kind == "pref":
        alpha, beta, b = theta[:3]
        params.update(alpha=alpha * y_scale / m_scale, beta=beta * y_scale, b=b * y_scale + y_mean)
    else:
        beta, b = theta[:2]
        params.update(beta=beta * y_scale, b=b * y_scale + y_mean)
    return {k: float(params[k]) for k in PARAMS[kind]}


def preference_slope(m, params: Mapping[str, float], side: str) -> np.ndarray:
    """d PrefOdds / dm of the preference model along one branch ("positive" or "negative").

    The branch is chosen by ``side``, not by the sign of m, so m = 0 gives that side's one-sided
    slope (D may have a kink at 0: continuity is imposed, smoothness is not).
    """
    suffix = {"positive": "_pos", "negative": "_neg"}[side]
    centre, length, power = (params[k + suffix] for k in ("m", "L", "p"))
    m = np.asarray(m, dtype=np.float64)
    d = branch(m, centre, length, power)
    d_slope = -2.0 * power * (m - centre) * d / (length + (m - centre) ** 2)
    return params["alpha"] * d + (params["alpha"] * m + params["beta"]) * d_slope


def regions(params: Mapping[str, float], m_max: float, points: int = 4001) -> dict:
    """Where the preference curve leaves its linear region and where it converges, on each side of 0.

    Walking outward from m = 0 on each side, ``linear_end`` is the first m where the slope ratio
    s(m)/s(0) drops below 0.5 and ``convergence_start`` the first where it drops below 0.1 (s(0) is
    that side's one-sided slope at 0). Linear: |m| < linear_end; transition: between the two;
    convergence: beyond convergence_start (where the curve has flattened, or turned back). A
    boundary is None when the ratio never drops that far within |m| ≤ ``m_max`` (the swept range),
    or when s(0) is zero.
    """
    out: dict = {"thresholds": list(REGION_THRESHOLDS), "m_max": float(m_max)}
    for side, sign in (("positive", 1.0), ("negative", -1.0)):
        ms = sign * np.linspace(0.0, m_max, points)
        slopes = preference_slope(ms, params, side)
        s0 = float(slopes[0])
        entry: dict = {"slope_at_0": s0}
        for key, threshold in zip(("linear_end", "convergence_start"), REGION_THRESHOLDS, strict=True):
            below = np.flatnonzero(slopes / s0 < threshold) if s0 != 0.0 else np.array([], dtype=int)
            entry[key] = float(ms[below[0]]) if below.size else None
        out[side] = entry
    return out


def regions_of(fit: Fit, m_max: float) -> dict:
    """``regions`` of a preference fit, withheld (None, with the reason) when a parameter sits on a
    bound: there the curve's shape is the bound's, not the data's."""
    out = regions(fit.params, m_max)
    if fit.at_bound:
        out["withheld"] = f"parameters at a bound: {', '.join(f'{k} ({v})' for k, v in fit.at_bound.items())}"
        for side in ("positive", "negative"):
            out[side].update(linear_end=None, convergence_start=None)
    return out


def mean_curve(frame: pd.DataFrame, split: str, column: str) -> pd.DataFrame:
    """Per m: mean and standard deviation over the examples of ``split`` (columns m, mean, std, n)."""
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise FitError(f"no rows of split {split!r} in the sweep (splits present: {sorted(frame['split'].unique())})")
    grouped = rows.groupby("m")[column]
    table = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=0), "n": grouped.size()})
    return table.reset_index().sort_values("m", ignore_index=True)


def example_matrix(frame: pd.DataFrame, split: str, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example ids, m, values [examples, m]) of one split and column of a ``sweep.parquet`` frame."""
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise FitError(f"no rows of split {split!r} in the sweep")
    table = rows.pivot_table(index="example_id", columns="m", values=column, aggfunc="mean")
    if table.isna().any().any():
        raise FitError(f"sweep: some examples of split {split!r} lack some m; every example needs the full grid")
    return table.index.to_numpy(), table.columns.to_numpy(dtype=np.float64), table.to_numpy(dtype=np.float64)


# Each leave-one-m-out refit starts from the full fit and the neutral decay only (screen 0): one
# refit per swept m, and the full fit is already the best of the stage's restarts.
CV_RESTARTS = 1
CV_SCREEN = 0


def form_test(fit: Fit, m: np.ndarray, y: np.ndarray, values: np.ndarray | None, seed: int = 0) -> dict:
    """The paper's form against simpler curves on the points (m, y) it was fitted to: per model its
    parameter count, R², leave-one-m-out R², AICc, BIC and (``values``: [examples, m]) R² on the
    individual examples; the preferred model by AICc and the comparison in words."""
    m, y = np.asarray(m, dtype=np.float64), np.asarray(y, dtype=np.float64)
    free = len(PARAMS[fit.kind]) - 1  # continuity at 0 removes one

    def refit(m_: np.ndarray, y_: np.ndarray):
        return fit_curve(fit.kind, m_, y_, CV_RESTARTS, seed, start=fit.params, screen=CV_SCREEN).predict

    try:
        cv = loo_r2(refit, m, y)
    except FitError:
        cv = float("nan")
    rss = float(np.sum((y - fit.predict(m)) ** 2))
    paper = {"params": free, "r2": fit.r2, "cv_r2": cv, **criteria(rss, len(m), free)}
    alternatives = compare(m, y, max_params=free)
    if values is not None:
        paper["example_r2"] = pooled_r2(m, values, fit.predict)
        for name, entry in alternatives.items():
            entry["example_r2"] = pooled_r2(m, values, fit_alternative(name, m, y))
    best, words = verdict(paper, alternatives)
    return {"paper": paper, "alternatives": alternatives, "best": best or None, "verdict": words}


@dataclass(frozen=True)
class SweepFit:
    """The fits of one run's sweep: mean curves and fits per (kind, split), kind "pref" or "util";
    ``forms``: the form test (``form_test``) of each train and test fit; ``intervals``: bootstrap
    intervals (``steer.analysis.bootstrap.fit_intervals``), None when not computed."""

    curves: dict[tuple[str, str], pd.DataFrame]
    fits: dict[tuple[str, str], Fit]
    forms: dict[tuple[str, str], dict] = field(default_factory=dict)
    intervals: dict | None = None

    @property
    def splits(self) -> list[str]:
        """The fitted splits in ``ALL_SPLITS`` order."""
        return [s for s in ALL_SPLITS if ("pref", s) in self.fits]

    @property
    def m_max(self) -> float:
        return float(max(c["m"].abs().max() for c in self.curves.values()))

    def transfer_r2(self, kind: str) -> float:
        """R² of the train fit on the test curve (Table 6)."""
        test = self.curves[kind, "test"]
        return self.fits[kind, "train"].score(test["m"], test["mean"])

    def transfer_alternatives(self, kind: str) -> dict[str, float | None]:
        """R² on the test curve of each alternative fitted to the train curve (beside Table 6)."""
        train, test = self.curves[kind, "train"], self.curves[kind, "test"]
        names = self.forms.get((kind, "train"), {}).get("alternatives", {})
        return {
            name: _json_float(r_squared(test["mean"], fit_alternative(name, train["m"], train["mean"])(test["m"])))
            for name in names
        }

    def to_json(self) -> dict:
        """The content of ``fit.json`` (described in docs/fit-and-reports.md).

        ``{"pref": {"train": {"params", "r2", "points", "at_bound", "form", ...}, "test": {...},
        "transfer": {"r2", "alternatives"}}, "util": {...}, "regions": {...}}``. An entry fitted to a
        flat curve carries ``"degenerate": "flat"``; an R² withheld for too few points carries
        ``"r2_withheld"`` (the reason); an undefined R² is null.
        """
        out: dict = {}
        for kind in COLUMNS:
            entry: dict = {}
            for split in self.splits:
                fit = self.fits[kind, split]
                entry[split] = {"params": fit.params, "r2": _json_float(fit.r2), "points": fit.points}
                entry[split]["at_bound"] = fit.at_bound
                for key, value in (("degenerate", fit.degenerate), ("r2_withheld", fit.withheld)):
                    if value:
                        entry[split][key] = value
                if (kind, split) in self.forms:
                    entry[split]["form"] = _json_clean(self.forms[kind, split])
                if self.intervals and (kind, split) in self.intervals:
                    entry[split].update(_json_clean(self.intervals[kind, split]))
            entry["transfer"] = {"r2": _json_float(self.transfer_r2(kind))}
            entry["transfer"]["alternatives"] = self.transfer_alternatives(kind)
            out[kind] = entry
        out["regions"] = {"fit": "pref.train", **regions_of(self.fits["pref", "train"], self.m_max)}
        for side, bounds in ((self.intervals or {}).get("regions") or {}).items():
            out["regions"][side].update(_json_clean(bounds))
        return out


def fit_sweep(frame: pd.DataFrame, restarts: int = 16, seed: int = 0, progress: bool = False) -> SweepFit:
    """Fit preference and utility on the train, the validation (when the sweep has it) and the test
    mean curves of a ``sweep.parquet`` frame (``progress``: a bar over each curve's restarts), and
    test the form of the train and test fits (``form_test``)."""
    present = set(frame["split"].unique())
    splits = [s for s in ALL_SPLITS if s in SPLITS or s in present]
    curves = {(kind, split): mean_curve(frame, split, col) for kind, col in COLUMNS.items() for split in splits}
    fits = {
        key: fit_curve(key[0], c["m"], c["mean"], restarts, seed, progress, label=f"{key[0]} {key[1]}")
        for key, c in curves.items()
    }
    forms = {}
    for (kind, split), fit in fits.items():
        if split not in SPLITS or fit.degenerate:
            continue
        _, m, values = example_matrix(frame, split, COLUMNS[kind])
        forms[kind, split] = form_test(fit, m, values.mean(axis=0), values, seed)
    return SweepFit(curves, fits, forms)


def _json_float(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _json_clean(value):
    """``value`` with every non-finite float as None and numpy scalars as Python ones (valid JSON)."""
    if isinstance(value, Mapping):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _json_float(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
