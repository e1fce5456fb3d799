"""The SPLIT-vs-SFT comparison of experiments/train_matrix.py on hand-made sweep curves."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import load_experiment

train_matrix = load_experiment("train_matrix")


def curve(pref: list[float], util: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"pref_odds": pref, "util_odds": util}, index=[-2.0, -1.0, 0.0, 1.0, 2.0])


SFT = curve([-4, -2, 0, 2, 4], [-12, -11, -10, -9, -8])
# SPLIT turns back at m = +2 and m = -2 (validity decay): those points are not on its segment.
SPLIT = curve([-2, -3, 0, 3, 1], [-20, -13, -10, -7, -30])


def test_steering_segment_stops_where_preference_turns_back():
    pref, util = train_matrix.steering_segment(SPLIT, 1)
    assert pref.tolist() == [0, 3] and util.tolist() == [-10, -7]
    pref, util = train_matrix.steering_segment(SPLIT, -1)
    assert pref.tolist() == [0, -3] and util.tolist() == [-10, -13]


def test_util_at_equal_pref_interpolates_over_the_shared_range():
    up = train_matrix.util_at_equal_pref(SFT, SPLIT, 1)
    assert [r["pref"] for r in up] == pytest.approx([1, 2, 3])
    assert [r["util_sft"] for r in up] == pytest.approx([-9.5, -9.0, -8.5])
    assert [r["util_split"] for r in up] == pytest.approx([-9.0, -8.0, -7.0])
    down = train_matrix.util_at_equal_pref(SFT, SPLIT, -1)
    assert [r["pref"] for r in down] == pytest.approx([-1, -2, -3])
    assert [r["util_sft"] for r in down] == pytest.approx([-10.5, -11.0, -11.5])
    assert [r["util_split"] for r in down] == pytest.approx([-11.0, -12.0, -13.0])
