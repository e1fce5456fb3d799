"""dataset.validation: carved from train, seeded, disjoint from train and test, scored and fitted,
and never seen by training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from steer import rundir
from steer.analysis.fit import NEUTRAL_DECAY, curve, fit_sweep
from steer.pairs import PolarityPair, Splits, apply_limit, carve_validation, validation_size
from steer.stages import compose_config, run


def pairs(prefix: str, n: int) -> list[PolarityPair]:
    return [PolarityPair(f"{prefix}{i}", f"q{i}", "yes", "no") for i in range(n)]


SPLITS = Splits(pairs("tr", 20), pairs("te", 5))


@pytest.mark.parametrize("validation,expected", [(0, 0), (None, 0), (4, 4), (0.25, 5), (0.01, 1), (4.0, 4)])
def test_validation_size_counts_and_fractions(validation, expected):
    assert validation_size(validation, 20) == expected


@pytest.mark.parametrize("validation", [20, 25, -1, 1.5, -0.2, "a", True])
def test_validation_size_refuses_what_cannot_work(validation):
    with pytest.raises(ValueError, match="dataset.validation"):
        validation_size(validation, 20)


def test_carved_validation_is_seeded_and_disjoint():
    one = carve_validation(SPLITS, 6, seed=3)
    again = carve_validation(SPLITS, 6, seed=3)
    other = carve_validation(SPLITS, 6, seed=4)
    ids = lambda ps: [p.id for p in ps]  # noqa: E731
    assert ids(one.validation) == ids(again.validation) and ids(one.validation) != ids(other.validation)
    assert len(one.validation) == 6 and len(one.train) == 14 and ids(one.test) == ids(SPLITS.test)
    assert not set(ids(one.validation)) & set(ids(one.train))
    assert set(ids(one.validation)) | set(ids(one.train)) == set(ids(SPLITS.train))
    assert [name for name, _ in one.items()] == ["train", "validation", "test"]
    assert [name for name, _ in SPLITS.items()] == ["train", "test"]  # none by default: pairs.jsonl unchanged
    assert len(apply_limit(one, 4).validation) == 4


def test_validation_is_fitted_like_the_other_splits():
    m = np.array([-4, -3, -2, -1, -0.5, 0, 0.5, 1, 2, 3, 4], dtype=float)  # 11: the fewest the fit gives an R² on
    pref = curve("pref", m, {"alpha": 1.0, "beta": 0.5, "b": 0.0, **NEUTRAL_DECAY})
    util = curve("util", m, {"beta": 2.0, "b": -3.0, **NEUTRAL_DECAY})
    rows = [
        {"split": s, "example_id": f"{s}{i}", "m": mi, "pref_odds": p + 0.1 * i, "util_odds": u - 0.1 * i}
        for s in ("train", "validation", "test")
        for i in range(3)
        for mi, p, u in zip(m, pref, util, strict=True)
    ]
    result = fit_sweep(pd.DataFrame(rows), restarts=2)
    fit_json = result.to_json()
    assert result.splits == ["train", "validation", "test"]
    assert fit_json["pref"]["validation"]["r2"] > 0.99
    no_validation = fit_sweep(pd.DataFrame([r for r in rows if r["split"] != "validation"]), restarts=2)
    assert "validation" not in no_validation.to_json()["pref"]


def test_training_never_sees_the_validation_pairs(tmp_path, smol):
    """DiffMean's vector is the mean over the train split of pairs.jsonl: it equals the estimate
    from the train records alone and differs from one that includes the validation pairs."""
    from steer.objectives import OBJECTIVES

    cfg = compose_config(
        ["dataset.limit=3", "dataset.validation=3", "stages=[train]", "progress=false", "tracking.wandb=false"]
    )
    run(cfg, tmp_path)
    records = rundir.read_pairs(tmp_path)
    assert [r.split for r in records].count("validation") == 3
    by_split = {s: {r.example_id for r in records if r.split == s} for s in ("train", "validation", "test")}
    assert not by_split["validation"] & (by_split["train"] | by_split["test"])
    saved = load_file(tmp_path / rundir.WEIGHTS)["delta_b"]
    model, tokenizer = smol
    estimator = OBJECTIVES["diffmean"](batch_size=8)
    train = [r for r in records if r.split == "train"]
    with_validation = [r for r in records if r.split in ("train", "validation")]
    alone = estimator.estimate(model, tokenizer, train, cfg.layer, False)["delta_b"]
    mixed = estimator.estimate(model, tokenizer, with_validation, cfg.layer, False)["delta_b"]
    assert saved.float().sub(alone.float()).abs().max() < 1e-5
    assert saved.float().sub(mixed.float()).abs().max() > 1e-3
