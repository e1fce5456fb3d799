"""The train stage through ``run``: config errors before any work, what a trained run writes."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from steer.core.interventions import DynamicAffine
from steer.objectives.training import LOG_COLUMNS
from steer.stages import ConfigError, run
from steer.stages.train import train_settings
from tests.test_stages import config as stages_config


def config(*overrides: str):
    return stages_config("stages=[train]", *overrides)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["objective=split", "+objective.gama=1"], "objective.gama is not an option of split"),
        (["objective=sft", "objective.reduction=mean"], "objective.reduction='mean' is not one of batch_token_mean"),
        (["objective=sft", "train.dropout=1.5"], "train.dropout=1.5 is not valid"),
        (["objective=sft", "train.directions=minus"], "train.directions='minus' is not valid"),
        (["objective=reps", "objective.length=tokens"], "objective.length='tokens' is not one of sequence, answer"),
        (["objective=sft", "train.lr=-1"], "train.lr=-1.0 is not valid"),
        (["objective=sft", "train.factors=[]"], "train.factors=() is not valid"),
        (["objective=sft", "train.epochs=0"], "train.epochs=0 is not valid"),
        (["objective=sft", "train.factors=2/x"], "train.factors='2/x': the factors must be numbers"),
        (["objective=sft", "train.factors=2/-4"], "train.factors=(2.0, -4.0) is not valid"),
        (["objective=sft", "train.init=zeros"], "train.init='zeros' is not one of"),
    ],
)
def test_bad_training_config_fails_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):  # by composition (the schema) or the run's check
        run(config(*overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_train_factors_as_one_string_are_the_list():
    """A tuning study's categorical choice holds the factors as "2/4/8": the same settings as [2,4,8]."""
    joined = train_settings(config("objective=sft", "train.factors=2/4/8"))
    listed = train_settings(config("objective=sft", "train.factors=[2,4,8]"))
    assert joined.train_factors == listed.train_factors == (2.0, 4.0, 8.0)


def test_trained_run_writes_log_and_training_record(tmp_path, smol):
    run_dir = tmp_path / "run"
    cfg = config("objective=split", "intervention=lora", "train.epochs=2")
    assert run(cfg, run_dir).ran == ["data", "train"]
    log = pd.read_csv(run_dir / "train_log.csv")
    assert list(log.columns) == LOG_COLUMNS and log["step"].tolist() == [1, 2]
    meta = json.loads((run_dir / "intervention.json").read_text())
    assert meta["objective"] == "split" and meta["training"]["steps"] == 2 and meta["training"]["processes"] == 1
    assert meta["training"]["final_loss"] == pytest.approx(log["loss"].iloc[-1])
    assert not (run_dir / "train_checkpoint.pt").exists()
    assert DynamicAffine.load(run_dir).lora_B.abs().sum() > 0  # trained, and loads from the files
    assert run(cfg, run_dir).ran == []  # finished: skipped


def test_vector_can_start_from_diffmean(tmp_path, smol):
    run(config(), tmp_path / "diffmean")  # objective=diffmean by default
    tiny_step = ["objective=sft", "train.init=diffmean", "train.lr=1e-9"]
    run(config(*tiny_step, "train.epochs=1"), tmp_path / "sft")
    start = DynamicAffine.load(tmp_path / "diffmean").delta_b
    trained = DynamicAffine.load(tmp_path / "sft").delta_b
    assert start.norm() > 1.0
    assert (trained - start).abs().max() < 1e-6  # one AdamW step of 1e-9 away from DiffMean
