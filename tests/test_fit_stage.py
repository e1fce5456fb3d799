"""The fit stage end to end on the embedded model (DiffMean, one example per split), through the files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from steer.analysis import fit as F
from steer.stages import compose_config, run
from tests.conftest import assert_refused
from tests.test_fit import decay_at_zero

GRID = "[-4,-3,-2,-1.5,-1,-0.5,0,0.5,1,1.5,2,3,4]"  # 13 m: R² needs parameters + 2 points
BASE = ["dataset.limit=1", f"sweep.grid={GRID}", "tracking.wandb=false", "progress=false"]


def config(*overrides: str):
    return compose_config([*BASE, *overrides])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fit") / "run"
    result = run(config("stages=[train,sweep,fit]"), run_dir)
    assert result.ran == ["data", "train", "sweep", "fit"]
    return run_dir


def test_fit_json_has_the_documented_shape(finished):
    out = json.loads((finished / "fit.json").read_text())
    assert set(out) == {"pref", "util", "regions"}
    for kind in ("pref", "util"):
        assert set(out[kind]) == {"train", "test", "transfer"}
        for split in ("train", "test"):
            entry = out[kind][split]
            assert tuple(entry["params"]) == F.PARAMS[kind]
            assert isinstance(entry["r2"], float) and entry["points"] == 13
            assert set(entry["at_bound"]) <= set(F.COORDS[kind])
            F.assert_meaningful(F.fit_from_json(kind, entry))  # m_pos >= 0 >= m_neg, beta_u >= 0
            assert entry["form"]["paper"]["r2"] == pytest.approx(entry["r2"])
            assert entry["form"]["verdict"]
        assert isinstance(out[kind]["transfer"]["r2"], float)
    assert tuple(F.PREF_PARAMS) == ("alpha", "beta", "b", "m_pos", "m_neg", "L_pos", "L_neg", "p_pos", "p_neg")
    for side in ("positive", "negative"):
        assert set(out["regions"][side]) == {"slope_at_0", "linear_end", "convergence_start"}
    assert ("withheld" in out["regions"]) == bool(out["pref"]["train"]["at_bound"])


def test_fit_json_agrees_with_the_sweep_file(finished):
    """R² recomputed from sweep.parquet and the stored parameters, independently of the stage."""
    out = json.loads((finished / "fit.json").read_text())
    frame = pd.read_parquet(finished / "sweep.parquet")
    for kind, column in (("pref", "pref_odds"), ("util", "util_odds")):
        means = {s: frame[frame.split == s].groupby("m")[column].mean() for s in ("train", "test")}
        for split, mean in means.items():
            predicted = F.curve(kind, mean.index.to_numpy(), out[kind][split]["params"])
            assert out[kind][split]["r2"] == pytest.approx(F.r_squared(mean.to_numpy(), predicted), abs=1e-9)
            params = out[kind][split]["params"]
            pos, neg = decay_at_zero(params)
            assert pos == pytest.approx(neg, rel=1e-6)
        train_fit = F.curve(kind, means["test"].index.to_numpy(), out[kind]["train"]["params"])
        transfer = F.r_squared(means["test"].to_numpy(), train_fit)
        assert out[kind]["transfer"]["r2"] == pytest.approx(transfer, abs=1e-9)
    # the real curves of this run are far from flat: a fit that did nothing would have R² ≈ 0
    assert out["util"]["train"]["r2"] > 0.9


def test_dynamics_figure_is_a_png_and_a_pdf(finished):
    image = imread(finished / "dynamics.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert np.std(image[..., :3]) > 0.05  # not a blank canvas
    assert (finished / "dynamics.pdf").read_bytes().startswith(b"%PDF")  # the vector twin, for papers
    # both are outputs of the fit stage: the ledger vouches for them (a deleted PDF reruns the fit)
    outputs = json.loads((finished / "stages.json").read_text())["fit"]["outputs"]
    assert set(outputs) == {"fit.json", "dynamics.png", "dynamics.pdf"} and all(outputs.values())


def test_fit_reruns_alone_when_its_config_changes(finished):
    before = (finished / "sweep.parquet").stat().st_mtime_ns
    assert run(config("stages=[fit]"), finished).ran == []
    assert run(config("stages=[fit]", "fit.restarts=2", "fit.bootstrap=3"), finished).ran == ["fit"]
    assert (finished / "sweep.parquet").stat().st_mtime_ns == before
    assert json.loads((finished / "stages.json").read_text())["fit"]["config"]["fit"]["restarts"] == 2
    out = json.loads((finished / "fit.json").read_text())
    for kind in ("pref", "util"):
        entry = out[kind]["train"]
        assert entry["bootstrap"]["n"] == 3 and set(entry["intervals"]) == {*F.PARAMS[kind], "width_pos", "width_neg"}
        assert all(lo <= hi for lo, hi in filter(None, entry["intervals"].values()))
    assert {"linear_end_interval", "linear_end_reached"} <= set(out["regions"]["positive"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sweep.grid=[-2,-1,0,1,2]", "5 distinct multipliers; the fit stage needs at least 9"),
        ("fit.restarts=0", "fit.restarts must be a positive integer"),
        ("fit.bootstrap=-1", "fit.bootstrap must be a whole number >= 0"),
    ],
)
def test_bad_fit_config_fails_before_anything_runs(tmp_path, override, message):
    assert_refused(config("stages=[train,sweep,fit]", override), tmp_path / "run", message)
