"""Numerical guards of the sweep: a grid of non-finite or non-numbers is refused; the mean curve
counts and reports non-finite rows instead of averaging them away."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from steer.core.metrics import pref_odds, util_odds
from steer.core.sweep import check_grid, summarize


def test_check_grid_accepts_finite_numbers():
    assert check_grid([-4, -2.5, 0, np.float32(2.0), np.int64(4)]) == [-4.0, -2.5, 0.0, 2.0, 4.0]
    assert check_grid(OmegaConf.create([-1, 0.5])) == [-1.0, 0.5]  # as the stage passes cfg.sweep.grid


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ([float("nan")], r"sweep\.grid: nan is not finite"),
        ([0.0, float("inf")], r"sweep\.grid: inf is not finite"),
        ([-float("inf"), 1.0], r"sweep\.grid: -inf is not finite"),
        ([1.0, "2"], r"sweep\.grid: '2' is not a number"),
        ([True, 1.0], r"sweep\.grid: True is not a number"),
        ([None], r"sweep\.grid: None is not a number"),
        ([], r"sweep\.grid is empty: give the multipliers"),
        (None, r"sweep\.grid=None must be a list of finite numbers"),
        ("1,2", r"sweep\.grid='1,2' must be a list of finite numbers"),
        ([1.0, 2.0, 1], r"sweep\.grid: 1 appears twice"),
    ],
)
def test_check_grid_refuses(grid, match):
    with pytest.raises(ValueError, match=match):
        check_grid(grid)


def frame_with_bad_rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for split in ("train", "test"):
        for m in (-2.0, 0.0, 2.0):
            for i in range(5):
                rows.append(
                    {
                        "split": split,
                        "example_id": f"{split}-{i}",
                        "m": m,
                        "loss_pos": rng.uniform(1, 9),
                        "loss_neg": rng.uniform(1, 9),
                    }
                )
    frame = pd.DataFrame(rows)
    frame.loc[(frame.split == "train") & (frame.m == 2.0) & (frame.example_id == "train-1"), "loss_pos"] = np.nan
    frame.loc[(frame.split == "train") & (frame.m == 2.0) & (frame.example_id == "train-3"), "loss_neg"] = np.inf
    frame.loc[(frame.split == "test") & (frame.m == -2.0) & (frame.example_id == "test-0"), "loss_pos"] = np.inf
    frame["pref_odds"] = pref_odds(frame.loss_pos, frame.loss_neg)
    with np.errstate(invalid="ignore", over="ignore"):
        frame["util_odds"] = util_odds(frame.loss_pos, frame.loss_neg)
    return frame


def test_summarize_counts_non_finite_rows_and_averages_only_finite_ones(caplog):
    frame = frame_with_bad_rows()
    with caplog.at_level(logging.WARNING, logger="steer"):
        table = summarize(frame)
    assert table.loc[2.0, "nonfinite[train]"] == 2
    assert table.loc[-2.0, "nonfinite[test]"] == 1
    assert table[["nonfinite[train]", "nonfinite[test]"]].to_numpy().sum() == 3
    for split in ("train", "test"):
        for m in (-2.0, 0.0, 2.0):
            rows = frame[(frame.split == split) & (frame.m == m)]
            good = [r for r in rows.itertuples() if np.isfinite(r.pref_odds) and np.isfinite(r.util_odds)]
            assert table.loc[m, f"pref_odds[{split}]"] == pytest.approx(
                sum(r.pref_odds for r in good) / len(good), abs=1e-12
            )
            assert table.loc[m, f"util_odds[{split}]"] == pytest.approx(
                sum(r.util_odds for r in good) / len(good), abs=1e-12
            )
    assert np.isfinite(table.drop(columns=[c for c in table if c.startswith("nonfinite")]).to_numpy()).all()
    assert "3 of 30 rows have a non-finite loss or odds" in caplog.text
    assert "2 at m=2 (train)" in caplog.text and "1 at m=-2 (test)" in caplog.text


def test_summarize_of_a_clean_sweep_warns_nothing(caplog):
    frame = frame_with_bad_rows()
    frame = frame[np.isfinite(frame.pref_odds) & np.isfinite(frame.util_odds)]
    with caplog.at_level(logging.WARNING, logger="steer"):
        table = summarize(frame)
    assert (table[["nonfinite[train]", "nonfinite[test]"]] == 0).all().all()
    assert caplog.text == ""


def test_an_all_nan_m_is_a_nan_mean_with_its_count():
    frame = frame_with_bad_rows()
    frame.loc[frame.m == 0.0, "pref_odds"] = np.nan
    table = summarize(frame)
    assert np.isnan(table.loc[0.0, "pref_odds[train]"]) and table.loc[0.0, "nonfinite[train]"] == 5
