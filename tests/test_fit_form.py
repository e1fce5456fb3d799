"""Is the paper's form needed? Information criteria, leave-one-m-out R² and pooled R² against
independent computations; a plain cubic is given to the model comparison, which must prefer the
polynomial; parameters held to their meaning and flagged on their bounds; R² withheld for too few points."""

from __future__ import annotations

import numpy as np
import pytest

from steer.analysis import fit as F
from steer.analysis import forms
from tests.test_fit import GRID, PREF_TRUTH, SENTIMENT, SENTIMENT_M, UTIL_TRUTH, noisy


def test_criteria_against_hand_computation():
    # n = 20, k = 3 curve parameters (+ the noise variance: k' = 4), RSS = 2
    got = forms.criteria(2.0, 20, 3)
    aic = 20 * np.log(2.0 / 20) + 2 * 4
    assert got["aicc"] == pytest.approx(aic + 2 * 4 * 5 / (20 - 4 - 1))
    assert got["bic"] == pytest.approx(20 * np.log(0.1) + 4 * np.log(20))
    assert forms.criteria(2.0, 5, 3)["aicc"] is None  # n - k' - 1 = 0: undefined


def test_loo_r2_matches_the_hat_matrix_identity():
    """For least squares the leave-one-out residual is r_i / (1 − h_ii) (an identity, not a refit)."""
    rng = np.random.default_rng(0)
    m = np.linspace(-4, 4, 13)
    y = 0.3 * m**3 - m + rng.normal(0, 0.5, m.shape)
    model = forms.Polynomial(3)
    X = model.design(m / 4.0)
    hat = X @ np.linalg.pinv(X)
    residual = y - hat @ y
    loo = residual / (1 - np.diag(hat))
    expected = 1 - np.sum(loo**2) / np.sum((y - y.mean()) ** 2)
    assert forms.loo_r2(forms.linear_fitter(model), m, y) == pytest.approx(expected, rel=1e-9)


def test_pooled_r2_scores_every_example_point():
    m = np.array([-1.0, 0.0, 1.0])
    values = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    # prediction 1 everywhere: SS_res = 4 + 4 = 8 ... against the grand mean 1: SS_tot = 8 → R² 0
    assert forms.pooled_r2(m, values, lambda x: np.ones_like(x)) == pytest.approx(0.0)
    assert forms.pooled_r2(m, values[:1], lambda x: x + 1) == pytest.approx(1.0)


def test_piecewise_quadratic_is_continuous_at_zero():
    x = np.array([-1e-9, 0.0])
    X = forms.PiecewiseQuadratic().design(x)
    coef = np.array([1.0, 2.0, 3.0, -4.0, 5.0])
    a, b = X @ coef
    assert a == pytest.approx(b, abs=1e-8)


def test_a_plain_cubic_prefers_the_polynomial():
    rng = np.random.default_rng(3)
    m = np.linspace(-4, 4, 17)
    y = 0.4 * m**3 - 2.0 * m + 1.0 + rng.normal(0, 0.3, m.shape)
    fit = F.fit_curve("pref", m, y, restarts=4)
    got = F.form_test(fit, m, y, None)
    assert got["best"] in ("poly3", "poly4", "poly5")  # never the paper's form
    paper, cubic = got["paper"], got["alternatives"]["poly3"]
    assert cubic["aicc"] < paper["aicc"] - 2 and cubic["cv_r2"] > 0.99
    assert "preferred" in got["verdict"] and got["best"] in got["verdict"]
    assert set(got["alternatives"]) == {"poly2", "poly3", "poly4", "poly5", "pwquad"}


def test_curve_from_the_model_prefers_the_paper_form():
    """The control: data drawn from Eq. 15 on a dense grid, where simpler curves cannot follow."""
    clean, y = noisy("pref", PREF_TRUTH, GRID, seed=0, level=0.01)
    fit = F.fit_curve("pref", GRID, y, restarts=4)
    got = F.form_test(fit, GRID, y, None)
    assert got["best"] == "paper" and got["paper"]["cv_r2"] > 0.98


@pytest.mark.parametrize("points", [9, 10, 11])
def test_fewer_points_than_parameters_plus_two_withholds_r2(points):
    m = np.linspace(-4, 4, points)
    y = F.curve("pref", m, PREF_TRUTH) + np.random.default_rng(0).normal(0, 0.05, m.shape)
    fit = F.fit_curve("pref", m, y, restarts=2)
    assert fit.points == points
    if points < 11:
        assert np.isnan(fit.r2)
        assert fit.withheld.startswith(f"{points} distinct m for 9 parameters: R² needs at least 11")
        assert F.form_test(fit, m, y, None)["verdict"].startswith("AICc undefined")
    else:
        assert fit.withheld is None and 0.9 < fit.r2 <= 1.0


def test_withheld_r2_reaches_fit_json_with_its_reason():
    frame = sweep_frame(np.linspace(-4, 4, 9))
    out = F.fit_sweep(frame, restarts=2).to_json()
    assert out["pref"]["train"]["r2"] is None
    assert "R² needs at least 11" in out["pref"]["train"]["r2_withheld"]
    assert out["pref"]["transfer"]["r2"] is not None  # a score on other data is not by construction


def sweep_frame(m: np.ndarray, n: int = 4, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "test"):
        for i in range(n):
            pref = F.curve("pref", m, PREF_TRUTH) + rng.normal(0, 0.1, m.shape)
            util = F.curve("util", m, UTIL_TRUTH) + rng.normal(0, 0.1, m.shape)
            rows += [
                dict(split=split, example_id=f"{split}{i}", m=mk, pref_odds=p, util_odds=u)
                for mk, p, u in zip(m, pref, util, strict=True)
            ]
    return pd.DataFrame(rows)


INVERTED_UTIL = {"beta": -5.0, "b": -1.0, "m_pos": 3.0, "m_neg": -3.0, "L_pos": 4.0, "L_neg": 4.0}


@pytest.mark.parametrize(
    ("kind", "m", "y"),
    [
        ("pref", SENTIMENT_M, SENTIMENT["pref"]),
        ("util", SENTIMENT_M, SENTIMENT["util"]),
        ("pref", GRID, 2.0 * GRID + 1.0),  # a straight line: no decay within the range
        ("pref", GRID, -0.01 * GRID**3 + GRID),  # a cubic
        # utility lowest at m = 0: only a negative β_u would fit it
        ("util", GRID, F.curve("util", GRID, {**INVERTED_UTIL, "p_pos": 1.0, "p_neg": 1.0})),
    ],
)
def test_every_fit_keeps_its_meaning_and_names_its_bounds(kind, m, y):
    fit = F.fit_curve(kind, m, np.asarray(y, dtype=float), restarts=3)
    F.assert_meaningful(fit)  # the fit asserts it too; here on the stored numbers
    assert fit.params["m_pos"] >= 0 >= fit.params["m_neg"]
    assert max(fit.params["m_pos"], -fit.params["m_neg"]) <= np.max(np.abs(m)) + 1e-9
    if kind == "util":
        assert fit.params["beta"] >= 0
    assert set(fit.at_bound) <= set(F.COORDS[kind])
    assert set(fit.at_bound.values()) <= {"lower", "upper"}
    for name, side in fit.at_bound.items():
        if name == "m_pos":
            target = 0.0 if side == "lower" else np.max(m)
            assert fit.params["m_pos"] == pytest.approx(target, abs=2e-3 * np.max(np.abs(m)))


def test_an_inverted_utility_is_not_followed():
    """A utility with a trough at m = 0 is what β_u < 0 draws; held to β_u ≥ 0 the fit cannot draw it
    (without the bound it would be exact: the data are the model's own curve)."""
    y = F.curve("util", GRID, {**INVERTED_UTIL, "p_pos": 1.0, "p_neg": 1.0})
    fit = F.fit_curve("util", GRID, y, restarts=3)
    assert fit.params["beta"] >= 0 and fit.r2 < 0.9


def test_a_line_is_flagged_and_its_regions_withheld():
    frame = sweep_frame(GRID)
    frame["pref_odds"] = 2.0 * frame["m"] + 1.0 + np.random.default_rng(1).normal(0, 0.1, len(frame))
    result = F.fit_sweep(frame, restarts=2)
    out = result.to_json()
    assert out["pref"]["train"]["at_bound"], "a line has no decay to find: some parameter must be on a bound"
    assert "parameters at a bound" in out["regions"]["withheld"]
    assert out["regions"]["positive"]["linear_end"] is None
    # computed from the same parameters the boundary is there: it is withheld, not missing
    assert F.regions(result.fits["pref", "train"].params, 20.0)["positive"]["slope_at_0"] > 0


def test_fit_json_form_entry_has_every_number():
    out = F.fit_sweep(sweep_frame(GRID), restarts=2).to_json()
    form = out["pref"]["train"]["form"]
    assert set(form) == {"paper", "alternatives", "best", "verdict"}
    assert {"params", "r2", "cv_r2", "aicc", "bic", "example_r2"} <= set(form["paper"])
    assert form["paper"]["params"] == 8  # 9 named, continuity at 0 removes one
    assert form["paper"]["r2"] == pytest.approx(out["pref"]["train"]["r2"])
    for entry in form["alternatives"].values():
        assert {"params", "r2", "cv_r2", "aicc", "bic", "example_r2"} <= set(entry)
        assert entry["params"] <= 8
    # per-example R² is below the mean curve's: examples scatter around the mean
    assert form["paper"]["example_r2"] < form["paper"]["r2"]
    assert set(out["pref"]["transfer"]["alternatives"]) == set(form["alternatives"])


def test_figure_marks_a_fit_on_a_bound_and_draws_the_preferred_alternative():
    import pandas as pd
    from matplotlib.figure import Figure

    from steer.analysis.plots import Panel, draw_dynamics

    m = np.linspace(-4, 4, 13)
    y = 0.4 * m**3 - 2.0 * m
    points = pd.DataFrame({"m": m, "mean": y, "std": np.zeros_like(m)})
    fit = F.Fit("pref", dict(PREF_TRUTH), 0.9, at_bound={"p_pos": "upper"})
    cubic = forms.fit_alternative("poly3", m, y)
    panel = Panel("train split", {"pref": points}, {"pref": fit}, alternatives={"pref": ("poly3", cubic)})
    ax = Figure().subplots()
    draw_dynamics(ax, panel)
    assert "pref 0.900†" in ax.get_title()
    notes = " ".join(t.get_text() for t in ax.texts)
    assert "p_pos" in notes and "poly3" in notes
    thin = [line for line in ax.lines if line.get_linewidth() == 0.6]
    assert len(thin) == 1
    x, drawn = thin[0].get_data()
    np.testing.assert_allclose(drawn, 0.4 * x**3 - 2.0 * x, atol=1e-9)  # the cubic, exactly
