"""The validity-decay model of the paper and its fit to the mean log-odds curve over m.

Decay, piecewise rational quadratic, one branch per sign of m::

    D(m) = (1 + (m − m_pos)² / L_pos)^(−p_pos)    m ≥ 0
    D(m) = (1 + (m − m_neg)² / L_neg)^(−p_neg)    m < 0

Preference: PrefOdds(m) ≈ (alpha·m + beta)·D(m) + b  (parameters ``PREF_PARAMS``).
Utility:    UtilOdds(m) ≈ beta·D_u(m) + b             (``UTIL_PARAMS``: the paper's β_u and b_u,
stored as ``beta`` and ``b``; D_u has its own six decay parameters). The model, the fit and the R²
tables are described in docs/fit-and-reports.md.

Fitting (``fit_curve``) minimises the mean squared error on the points given (the mean curve over
examples) with scipy's SLSQP and analytic gradients, in normalised units (m / max|m|, y
standardised; the parameters are mapped back):
- continuity of D at m = 0 is an equality constraint (the branches may meet at an angle);
- L± and p± are optimised as logarithms, so they stay positive, within bounds;
- each branch's peak width √(L / 2p) (D ≈ 1 − (m − centre)² / (2·width²) near its centre) is at
  least the smallest spacing of the swept m (an inequality constraint): a decay sharper than the
  grid is not determined by the data and would let the fit thread spikes between the points;
- between two neighbouring swept points the curve stays within its own values at those two points,
  widened by ``ENVELOPE`` (10 %) of the data's range (inequality constraints on points half the
  minimum peak width apart, so no peak fits between them): the data cannot see an excursion
  between two points, so a fit must not use one. The bound follows the curve, not the data, so a
  curve the model cannot follow gets a lower R², never an infeasible fit;
- restarts are deterministic: ``SCREEN`` decays drawn with ``seed`` (made continuous, linear
  parameters solved by least squares) are ranked by error, and SLSQP starts from the ``restarts``
  best mutually distinct ones plus one neutral decay; the best feasible result wins. Results
  are deterministic for a given seed (a different BLAS thread count can move an R² in the 4th
  to 6th decimal).

Degenerate input, documented:
- NaN or ±inf in m or y, mismatched shapes, or fewer distinct m than parameters: ``FitError``
  (a ``ValueError``) naming the problem, before scipy is called.
- a flat curve (all y equal): no fit is attempted; the result is the constant b = y with
  alpha = beta = 0, a neutral decay (m± = 0, L± = 1, p± = 1), ``r2`` NaN (R² is undefined when
  the data have no variance) and ``degenerate = "flat"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

DECAY_PARAMS = ("m_pos", "m_neg", "L_pos", "L_neg", "p_pos", "p_neg")
PREF_PARAMS = ("alpha", "beta", "b", *DECAY_PARAMS)
UTIL_PARAMS = ("beta", "b", *DECAY_PARAMS)
PARAMS = {"pref": PREF_PARAMS, "util": UTIL_PARAMS}
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

# Bounds of the optimised decay (m_pos, m_neg, log L_pos, log L_neg, log p_pos, log p_neg), with m
# scaled to [-1, 1]: centres within twice the swept range, 1e-4 ≤ L ≤ 1e4, 1e-3 ≤ p ≤ 50.
_BOUNDS = [(-2.0, 2.0)] * 2 + [(np.log(1e-4), np.log(1e4))] * 2 + [(np.log(1e-3), np.log(50.0))] * 2
# Starting centres are never exactly 0: there the continuity constraint has a zero gradient, which
# SLSQP cannot handle ("singular matrix C"). Near-centred starts sit at ±_NEAR_ZERO instead.
_NEAR_ZERO = 0.05
_NEUTRAL = np.array([_NEAR_ZERO, -_NEAR_ZERO, np.log(0.5), np.log(0.5), 0.0, 0.0])
# Screened starts must differ from each other by more than this in some coordinate.
_DISTINCT = np.array([0.5, 0.5, 2.0, 2.0, 1.0, 1.0])
_FEASIBLE = 1e-6
# Between two neighbouring swept points the fitted curve stays within its values there widened by
# ENVELOPE × the range of the data (checked every half minimum peak width: no peak fits between).
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


@dataclass(frozen=True)
class Fit:
    """A fitted curve: its kind, parameters (names of ``PARAMS[kind]``) and R² on the fitted data."""

    kind: str
    params: dict[str, float]
    r2: float
    degenerate: str | None = None

    def predict(self, m) -> np.ndarray:
        return curve(self.kind, m, self.params)

    def score(self, m, y) -> float:
        """R² of this fit on other data (e.g. the test curve of a train fit)."""
        m, y = _checked(m, y, self.kind, need=1)
        return r_squared(y, self.predict(m))


def fit_from_json(kind: str, entry: Mapping) -> Fit:
    """A fit as ``fit.json`` stores it (an entry of ``SweepFit.to_json``)."""
    r2 = entry["r2"]
    return Fit(kind, dict(entry["params"]), float("nan") if r2 is None else float(r2), entry.get("degenerate"))


def check_restarts(restarts: int) -> None:
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
        raise ValueError(f"fit.restarts must be a positive integer, got {restarts!r}")


def fit_curve(kind: str, m, y, restarts: int = 16, seed: int = 0, progress: bool = False, label: str = "") -> Fit:
    """Fit the ``kind`` model ("pref" or "util") to points (m, y), usually the mean curve over examples.
    ``progress``: a bar over the SLSQP restarts (``label`` names the curve in it)."""
    # The linear algebra here is tiny: BLAS threads only add wake-up overhead (4x slower on a busy CPU).
    with threadpool_limits(limits=1):
        return _fit_curve(kind, m, y, restarts, seed, progress, label)


def _fit_curve(kind: str, m, y, restarts: int, seed: int, progress: bool = False, label: str = "") -> Fit:
    if kind not in PARAMS:
        raise ValueError(f"kind must be 'pref' or 'util', got {kind!r}")
    check_restarts(restarts)
    names = PARAMS[kind]
    m, y = _checked(m, y, kind, need=len(names))
    if np.ptp(y) <= 1e-12 * max(1.0, abs(float(y.mean()))):
        flat = {"alpha": 0.0, "beta": 0.0, "b": float(y.mean()), **NEUTRAL_DECAY}
        return Fit(kind, {k: flat[k] for k in names}, float("nan"), degenerate="flat")

    m_scale = float(np.max(np.abs(m)))
    y_mean, y_scale = float(y.mean()), float(y.std())
    x, t = m / m_scale, (y - y_mean) / y_scale
    min_width = float(np.min(np.diff(np.unique(x))))
    n_lin = len(names) - len(DECAY_PARAMS)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, jac = _model(kind, x, theta)
        r = value - t
        return float(np.mean(r * r)), 2.0 * jac.T @ r / len(x)

    envelope, envelope_jac = _envelope_constraint(kind, x, t, min_width)
    constraints = [
        {"type": "eq", "fun": _continuity, "jac": _continuity_jac},
        {"type": "ineq", "fun": lambda th: _log_widths(th) - np.log(min_width), "jac": _log_widths_jac},
        {"type": "ineq", "fun": envelope, "jac": envelope_jac},
    ]
    bounds = [(None, None)] * n_lin + _BOUNDS
    best: tuple[float, np.ndarray] | None = None
    starts = _starting_decays(kind, x, t, min_width, restarts, seed)
    desc = f"fit {label or kind}"
    for decay0 in tqdm(starts, desc=desc, unit="restart", disable=not progress, leave=False):
        theta0 = np.concatenate([_linear_fit(kind, x, t, decay0), decay0])
        with np.errstate(all="ignore"):
            options = {"maxiter": 1000, "ftol": _FTOL}
            theta = minimize(
                loss, theta0, jac=True, method="SLSQP", bounds=bounds, constraints=constraints, options=options
            ).x
        value = loss(theta)[0]
        feasible = (
            abs(_continuity(theta)) <= _FEASIBLE
            and np.all(_log_widths(theta) >= np.log(min_width) - 1e-6)
            and np.all(envelope(theta) >= -1e-6)
        )
        if np.isfinite(value) and feasible and (best is None or value < best[0]):
            best = (value, theta)
    if best is None:
        raise FitError(
            f"{kind} fit: none of {restarts + 1} restarts met the constraints (continuity at m = 0, "
            "peak width, no excursion between points)"
        )
    params = _denormalise(kind, best[1], m_scale, y_mean, y_scale)
    return Fit(kind, params, r_squared(y, curve(kind, m, params)))


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


def _decay_jac(x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D(x) and dD/du for u = (m_pos, m_neg, log L_pos, log L_neg, log p_pos, log p_neg)."""
    pos = x >= 0
    centre = np.where(pos, u[0], u[1])
    length = np.exp(np.where(pos, u[2], u[3]))
    power = np.exp(np.where(pos, u[4], u[5]))
    z = x - centre
    base = 1.0 + z * z / length
    d = base ** (-power)
    d_centre = 2.0 * power * z * d / (length * base)
    d_log_length = power * z * z * d / (length * base)
    d_log_power = -power * np.log(base) * d
    jac = np.zeros((len(x), 6))
    for col, values in ((0, d_centre), (2, d_log_length), (4, d_log_power)):
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
    m_pos, m_neg, log_l_pos, log_l_neg, log_p_pos, log_p_neg = theta[-6:]
    neg = np.exp(log_p_neg) * np.log1p(m_neg**2 * np.exp(-log_l_neg))
    return float(neg - np.exp(log_p_pos) * np.log1p(m_pos**2 * np.exp(-log_l_pos)))


def _continuity_jac(theta: np.ndarray) -> np.ndarray:
    m_pos, m_neg, log_l_pos, log_l_neg, log_p_pos, log_p_neg = theta[-6:]
    a_pos, a_neg = m_pos**2 * np.exp(-log_l_pos), m_neg**2 * np.exp(-log_l_neg)
    p_pos, p_neg = np.exp(log_p_pos), np.exp(log_p_neg)
    grad = np.zeros(len(theta))
    grad[-6:] = [
        -p_pos * 2.0 * m_pos * np.exp(-log_l_pos) / (1.0 + a_pos),
        p_neg * 2.0 * m_neg * np.exp(-log_l_neg) / (1.0 + a_neg),
        p_pos * a_pos / (1.0 + a_pos),
        -p_neg * a_neg / (1.0 + a_neg),
        -p_pos * np.log1p(a_pos),
        p_neg * np.log1p(a_neg),
    ]
    return grad


def _log_widths(theta: np.ndarray) -> np.ndarray:
    """log peak width of each branch, (positive, negative), in the optimised coordinates (linear)."""
    log_l, log_p = theta[-4:-2], theta[-2:]
    return 0.5 * (log_l - log_p - np.log(2.0))


def _log_widths_jac(theta: np.ndarray) -> np.ndarray:
    jac = np.zeros((2, len(theta)))
    for branch in (0, 1):
        jac[branch, len(theta) - 4 + branch] = 0.5
        jac[branch, len(theta) - 2 + branch] = -0.5
    return jac


def _starting_decays(kind: str, x: np.ndarray, t: np.ndarray, min_width: float, restarts: int, seed: int) -> list:
    """The neutral decay, then the ``restarts`` best distinct decays of a seeded screen.

    Screened decays have peak widths between the minimum and twice the swept range, powers in
    [0.1, 10]; half of them are centred near 0 (±``_NEAR_ZERO``), the others anywhere in the swept
    range; p_neg is solved from the continuity constraint.
    """
    rng = np.random.default_rng(seed)
    n = SCREEN
    width = np.exp(rng.uniform(np.log(min_width), np.log(4.0), (n, 2)))
    power = np.exp(rng.uniform(np.log(0.1), np.log(10.0), (n, 2)))
    centre = rng.uniform(-2.0, 2.0, (n, 2))
    centre[: n // 2] = [_NEAR_ZERO, -_NEAR_ZERO]
    with np.errstate(all="ignore"):
        length = 2.0 * power * width**2
        u = np.column_stack([centre, np.log(length), np.log(power)])
        a_pos = np.log1p(centre[:, 0] ** 2 / length[:, 0])
        a_neg = np.log1p(centre[:, 1] ** 2 / length[:, 1])
        u[:, 5] = u[:, 4] + np.log(a_pos / a_neg)
        low, high = np.array(_BOUNDS).T
        keep = np.all(np.isfinite(u) & (u >= low) & (u <= high), axis=1)
        log_widths = _log_widths(u.T).T
        keep &= np.all(log_widths >= np.log(min_width) - 1e-9, axis=1)
    u = u[keep]
    errors = np.array([np.mean((_design(kind, x, row) @ _linear_fit(kind, x, t, row) - t) ** 2) for row in u])
    starts = [_NEUTRAL]
    for i in np.argsort(errors):
        if len(starts) > restarts:
            break
        if all(np.any(np.abs(u[i] - s) > _DISTINCT) for s in starts[1:]):
            starts.append(u[i])
    return starts


def _design(kind: str, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    d = decay(x, u[0], u[1], *np.exp(u[2:]))
    columns = [x * d, d, np.ones_like(x)] if kind == "pref" else [d, np.ones_like(x)]
    return np.stack(columns, axis=1)


def _linear_fit(kind: str, x: np.ndarray, t: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The linear parameters that fit best for a fixed decay u (least squares)."""
    coef, *_ = np.linalg.lstsq(_design(kind, x, u), t, rcond=None)
    return coef


def _denormalise(kind: str, theta: np.ndarray, m_scale: float, y_mean: float, y_scale: float) -> dict[str, float]:
    """Map parameters of the normalised problem back to m and log-odds units."""
    m_pos, m_neg, log_l_pos, log_l_neg, log_p_pos, log_p_neg = theta[-6:]
    params = {
        "m_pos": m_pos * m_scale,
        "m_neg": m_neg * m_scale,
        "L_pos": np.exp(log_l_pos) * m_scale**2,
        "L_neg": np.exp(log_l_neg) * m_scale**2,
        "p_pos": np.exp(log_p_pos),
        "p_neg": np.exp(log_p_neg),
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


def mean_curve(frame: pd.DataFrame, split: str, column: str) -> pd.DataFrame:
    """Per m: mean and standard deviation over the examples of ``split`` (columns m, mean, std, n)."""
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise FitError(f"no rows of split {split!r} in the sweep (splits present: {sorted(frame['split'].unique())})")
    grouped = rows.groupby("m")[column]
    table = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=0), "n": grouped.size()})
    return table.reset_index().sort_values("m", ignore_index=True)


@dataclass(frozen=True)
class SweepFit:
    """The fits of one run's sweep: mean curves and fits per (kind, split), kind "pref" or "util"."""

    curves: dict[tuple[str, str], pd.DataFrame]
    fits: dict[tuple[str, str], Fit]

    @property
    def splits(self) -> list[str]:
        """The fitted splits in ``ALL_SPLITS`` order."""
        return [s for s in ALL_SPLITS if ("pref", s) in self.fits]

    def transfer_r2(self, kind: str) -> float:
        """R² of the train fit on the test curve (Table 6)."""
        test = self.curves[kind, "test"]
        return self.fits[kind, "train"].score(test["m"], test["mean"])

    def to_json(self) -> dict:
        """The content of ``fit.json``.

        ``{"pref": {"train": {"params", "r2"}, "test": {...}, "transfer": {"r2"}}, "util": {...},
        "regions": {...}}``. An entry fitted to a flat curve carries ``"degenerate": "flat"``; an
        undefined R² is null.
        """
        out: dict = {}
        for kind in COLUMNS:
            entry: dict = {}
            for split in self.splits:
                fit = self.fits[kind, split]
                entry[split] = {"params": fit.params, "r2": _json_float(fit.r2)}
                if fit.degenerate:
                    entry[split]["degenerate"] = fit.degenerate
            entry["transfer"] = {"r2": _json_float(self.transfer_r2(kind))}
            out[kind] = entry
        m_max = float(max(c["m"].abs().max() for c in self.curves.values()))
        out["regions"] = {"fit": "pref.train", **regions(self.fits["pref", "train"].params, m_max)}
        return out


def fit_sweep(frame: pd.DataFrame, restarts: int = 16, seed: int = 0, progress: bool = False) -> SweepFit:
    """Fit preference and utility on the train, the validation (when the sweep has it) and the test
    mean curves of a ``sweep.parquet`` frame (``progress``: a bar over each curve's restarts)."""
    present = set(frame["split"].unique())
    splits = [s for s in ALL_SPLITS if s in SPLITS or s in present]
    curves = {(kind, split): mean_curve(frame, split, col) for kind, col in COLUMNS.items() for split in splits}
    fits = {
        key: fit_curve(key[0], c["m"], c["mean"], restarts, seed, progress, label=f"{key[0]} {key[1]}")
        for key, c in curves.items()
    }
    return SweepFit(curves, fits)


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
