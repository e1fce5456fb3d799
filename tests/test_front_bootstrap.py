"""The preference–utility front on hand-made fits (closed form), and the bootstrap over examples."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from steer.analysis.bootstrap import fmt_interval, mean_curves, percentile_interval, r2_statistic, replicate
from steer.analysis.fit import NEUTRAL_DECAY, curve, fit_curve
from steer.report.front import best_fitted, best_within, build_front
from tests.synthetic_runs import WEIGHT_GRID, markdown_rows, write_config, write_sweep

# PrefOdds = m (no decay: p = 0), UtilOdds = 1 / (1 + m²): within δ of U(0) = 1 while |m| <= sqrt(δ / (1 − δ)).
PREF = {"alpha": 1.0, "beta": 0.0, "b": 0.0, **NEUTRAL_DECAY, "p_pos": 0.0, "p_neg": 0.0}
UTIL = {"beta": 1.0, "b": 0.0, **NEUTRAL_DECAY}


@pytest.mark.parametrize("delta", [0.0, 0.1, 0.3, 0.5, 0.75, 0.9])
def test_best_pref_within_budget_matches_closed_form(delta):
    expected = min(np.sqrt(delta / (1 - delta)), 2.0)
    best = best_fitted(PREF, UTIL, -2.0, 2.0, delta)
    assert best.m == pytest.approx(expected, abs=1e-3)
    assert best.pref == pytest.approx(expected, abs=1e-3)
    assert best.util >= 1.0 - delta - 1e-12


def test_budget_walk_stops_at_the_first_utility_drop():
    """A utility that recovers beyond a dip is not reachable: the walk from m = 0 stops at the dip."""
    m = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    util = np.array([0.0, 0.0, -2.0, 0.0, 0.0])
    pref = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    assert best_within(m, pref, util, 1.0).m == 0.0
    assert best_within(m, pref, util, 2.0).m == 3.0
    with pytest.raises(ValueError, match="contain 0"):
        best_within(m[m != 0], pref[m != 0], util[m != 0], 1.0)


def write_run(run_dir, n: int = 4) -> None:
    """A run whose examples all lie on the closed-form curves, with those curves as its fits."""
    write_config(run_dir, form="lora", objective="split")
    m = np.asarray(WEIGHT_GRID)
    rows = [
        {"split": split, "example_id": f"{split}-{i}", "m": mk, "loss_pos": np.nan, "loss_neg": np.nan}
        | {"pref_odds": p, "util_odds": u}
        for split in ("train", "test")
        for i in range(n)
        for mk, p, u in zip(m, curve("pref", m, PREF), curve("util", m, UTIL), strict=True)
    ]
    pd.DataFrame(rows).to_parquet(run_dir / "sweep.parquet", index=False)
    entry = {kind: {"params": params, "r2": 1.0} for kind, params in (("pref", PREF), ("util", UTIL))}
    fit = {kind: {"train": entry[kind], "test": entry[kind], "transfer": {"r2": 1.0}} for kind in entry}
    (run_dir / "fit.json").write_text(json.dumps(fit))


def test_front_report_reads_the_fits_and_checks_the_swept_points(tmp_path):
    write_run(tmp_path / "sentiment" / "run")
    paths, seconds = build_front(tmp_path, deltas=[0.5, 0.9])
    table = pd.read_csv(tmp_path / "reports" / "front.csv")
    assert seconds == 0.0 and len(table) == 1
    row = table.iloc[0]
    # δ = 0.5: the fit reaches m = 1 exactly; the grid's last point within budget is 0.8 (U(1.2) = 0.41).
    assert row["pref_fit_d0.5"] == pytest.approx(1.0, abs=1e-3) and row["m_swept_d0.5"] == pytest.approx(0.8)
    assert row["pref_fit_d0.9"] == pytest.approx(2.0) and row["pref_swept_d0.9"] == pytest.approx(2.0)
    assert {p.suffix for p in paths} == {".md", ".csv", ".tex", ".png", ".pdf"}
    assert (tmp_path / "reports" / "front-smollm2-135m-L15-sentiment.pdf").read_bytes().startswith(b"%PDF")
    rows = markdown_rows((tmp_path / "reports" / "front.md").read_text())
    # Markdown and LaTeX show the same cells: per δ the fitted best, its m, the swept best, its m.
    assert rows[0][6:] == [f"best Pref (fit) δ={d}" for d in (0.5, 0.9)] + [f"m (fit) δ={d}" for d in (0.5, 0.9)] + [
        f"best Pref (swept) δ={d}" for d in (0.5, 0.9)
    ] + [f"m (swept) δ={d}" for d in (0.5, 0.9)]
    assert rows[1][6:] == ["1.00", "2.00", "1", "2", "0.80", "2.00", "0.8", "2"]
    tex = (tmp_path / "reports" / "front.tex").read_text()
    assert "& 1.00 & 2.00 & 1 & 2 & 0.80 & 2.00 & 0.8 & 2 \\\\" in tex and "$\\delta$=0.5" in tex


def mean_at_edge(curves):
    """A cheap statistic: the mean test PrefOdds at the largest m."""
    return {"x": float(curves["pref", "test"][1][-1])}


def noisy_sweep(tmp_path, n: int):
    write_config(tmp_path)
    return write_sweep(tmp_path, WEIGHT_GRID, scale=1.0, n=n, seed=1)


def test_bootstrap_is_seeded_and_shrinks_like_the_standard_error(tmp_path):
    small, large = noisy_sweep(tmp_path / "a", 8), noisy_sweep(tmp_path / "b", 128)
    first = replicate(small, mean_at_edge, 300, seed=5)["x"]
    np.testing.assert_array_equal(first, replicate(small, mean_at_edge, 300, seed=5)["x"])
    assert not np.array_equal(first, replicate(small, mean_at_edge, 300, seed=6)["x"])
    widths = {}
    for name, frame in (("small", small), ("large", large)):
        interval = percentile_interval(replicate(frame, mean_at_edge, 300, seed=5)["x"])
        values = frame[(frame.split == "test") & (frame.m == frame.m.max())]["pref_odds"].to_numpy()
        point = mean_curves(frame)["pref", "test"][1][-1]
        assert interval.lo <= point <= interval.hi
        # Independent: the normal-theory 95 % width of a mean, 2 · 1.96 · s / sqrt(n).
        normal = 2 * 1.96 * values.std() / np.sqrt(len(values))
        assert (interval.hi - interval.lo) == pytest.approx(normal, rel=0.3)
        widths[name] = interval.hi - interval.lo
    assert widths["large"] < widths["small"] / 2


@pytest.mark.slow
def test_bootstrap_of_r2_refits_reproducibly(tmp_path):
    frame = noisy_sweep(tmp_path, 8)
    samples = replicate(frame, r2_statistic("train"), 6, seed=0)
    again = replicate(frame, r2_statistic("train"), 6, seed=0)
    np.testing.assert_array_equal(samples["pref"], again["pref"])
    m, y = mean_curves(frame)["pref", "train"]
    point = fit_curve("pref", m, y).r2
    interval = percentile_interval(samples["pref"])
    # R² of a resampled (noisier) mean curve is biased low: the spread sits under the point, within
    # the few 1e-5 a single replicate can fit better by
    assert interval.missing == 0 and 0.99 < interval.lo <= interval.hi <= point + 1e-4
    assert fmt_interval(0.95, interval).startswith("0.950 [0.99")


@pytest.mark.slow
def test_table_bootstrap_shows_intervals_in_md_and_csv_columns(tmp_path):
    from steer.report.r2 import build_table
    from tests.synthetic_runs import write_fit

    run_dir = tmp_path / "sentiment" / "run"
    noisy_sweep(run_dir, 6)
    write_fit(run_dir, {(k, w): 0.9 for k in ("pref", "util") for w in ("train", "test", "transfer")})
    build_table("table2", tmp_path, bootstrap=3, seed=0)
    md = (tmp_path / "reports" / "table2.md").read_text()
    csv = pd.read_csv(tmp_path / "reports" / "table2.csv")
    assert "0.900 [" in md and "3 replicates per run" in md
    assert {"pref_sentiment_lo", "pref_sentiment_hi", "util_Avg_lo"} <= set(csv.columns)
    assert csv["pref_sentiment_lo"].iloc[0] <= csv["pref_sentiment_hi"].iloc[0]


# ---------------------------------------------------------------- intervals of the fit's parameters

COVERAGE_M = np.linspace(-4, 4, 13)


def model_sweep(seed: int, n: int = 30, sigma: float = 0.3) -> pd.DataFrame:
    """Examples drawn from Eq. 15 (PREF_TRUTH of test_fit) plus independent noise at every point."""
    from tests.test_fit import PREF_TRUTH, UTIL_TRUTH

    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "test"):
        for i in range(n):
            pref = curve("pref", COVERAGE_M, PREF_TRUTH) + rng.normal(0, sigma, COVERAGE_M.shape)
            util = curve("util", COVERAGE_M, UTIL_TRUTH) + rng.normal(0, sigma, COVERAGE_M.shape)
            rows += [
                {"split": split, "example_id": f"{split}{i}", "m": m, "pref_odds": p, "util_odds": u}
                for m, p, u in zip(COVERAGE_M, pref, util, strict=True)
            ]
    return pd.DataFrame(rows)


def test_parameter_intervals_cover_the_truth_at_their_nominal_rate():
    """Repeated draws from the model: the 95 % intervals hold the true parameters about 95 % of the
    time and the 50 % intervals about half the time. Too narrow an interval (e.g. resampling points
    instead of examples) fails the first, too wide a one the second."""
    from steer.analysis.bootstrap import fit_replicates, summarise
    from steer.analysis.fit import SweepFit, mean_curve, width
    from tests.test_fit import PREF_TRUTH

    truth = dict(PREF_TRUTH)
    truth |= {f"width_{s}": width(truth[f"L_{s}"], truth[f"p_{s}"]) for s in ("pos", "neg")}
    key = [("pref", "train")]
    hits = {0.95: [], 0.5: []}
    for draw in range(6):
        frame = model_sweep(draw)
        points = mean_curve(frame, "train", "pref_odds")
        fit = fit_curve("pref", points["m"], points["mean"], restarts=4)
        result = SweepFit({key[0]: points}, {key[0]: fit})
        samples = fit_replicates(frame, result, 20, seed=draw, restarts=1, keys=key)
        for level in hits:
            summary = summarise(result, samples, level, keys=key)[key[0]]
            assert summary["bootstrap"]["missing"] == 0 and summary["bootstrap"]["n"] == 20
            for name, (lo, hi) in summary["intervals"].items():
                hits[level].append(lo <= truth[name] <= hi)
                if level == 0.95 and name in fit.params:
                    assert lo <= fit.params[name] <= hi, name  # the point estimate inside its own interval
    assert np.mean(hits[0.95]) >= 0.8, np.mean(hits[0.95])
    assert 0.3 <= np.mean(hits[0.5]) <= 0.75, np.mean(hits[0.5])
