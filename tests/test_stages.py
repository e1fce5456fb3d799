"""The stage runner: validation before any work, skipping finished stages, re-running changed ones."""

from __future__ import annotations

import json
import re

import pytest

from steer.io.secrets import scrub
from steer.stages import ConfigError, compose_config, run
from tests.conftest import assert_clean_failure, assert_refused, run_py

# Two values of m keep these tests fast; the fit stage needs at least 9, so it is left out here.
FAST = ["dataset.limit=2", "sweep.grid=[-1,1]", "stages=[train,sweep]", "tracking.wandb=false", "progress=false"]


def config(*overrides: str):
    return compose_config([*FAST, *overrides])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["intervention.form=bias"], "intervention.form='bias' is not one of local_weight, lora, vector"),
        (["layer=30"], "layer=30 is out of range: model smollm2-135m has layers 0..29"),
        (["layer=-1"], "layer=-1 is out of range"),
        (["dataset.n_train=0"], "dataset=sentiment: the train split is empty"),
        (["dataset.limit=0"], "dataset.limit must be a positive integer or null, got 0"),
        (["+dataset.colour=red"], "dataset.colour is not an option of the sentiment loader"),
        (["stages=[evaluate]"], "unknown stage 'evaluate'"),
        (["stages=[]"], "stages is empty"),
        (["sweep.grid=[]"], "sweep.grid is empty"),
        (["intervention=lora", "intervention.rank=0"], "intervention.rank must be a positive integer"),
        (["intervention=lora", "objective=diffmean"], "objective=diffmean trains only intervention=vector"),
    ],
)
def test_bad_config_fails_before_anything_is_written(tmp_path, overrides, message):
    assert_refused(config(*overrides), tmp_path / "run", re.escape(message))


def test_an_unknown_group_option_is_refused_when_the_config_is_composed():
    with pytest.raises(ConfigError, match="judge/select=best is not one of fit, fixed, validation"):
        config("stages=[judge]", "judge/select=best")


def test_finished_stages_are_skipped_and_changed_ones_rerun(tmp_path, smol):
    run_dir = tmp_path / "run"
    assert run(config(), run_dir).ran == ["data", "train", "sweep"]
    first = (run_dir / "sweep.parquet").read_bytes()
    assert run(config(), run_dir).ran == []
    assert run(config("sweep.batch_size=2"), run_dir).ran == [], "batch size does not change results"
    assert run(config("sweep.grid=[0]"), run_dir).ran == ["sweep"]
    assert run(config("dataset.limit=1", "sweep.grid=[0]"), run_dir).ran == ["data", "train", "sweep"]
    with pytest.raises(ConfigError, match="stage sweep needs the outputs of train"):
        run(config("stages=[sweep]"), run_dir)  # train's outputs are for dataset.limit=1
    assert run(config(), run_dir).ran == ["data", "train", "sweep"]
    assert (run_dir / "sweep.parquet").read_bytes() == first, "same config, same bytes"
    assert run(config("force=true"), run_dir).ran == ["train", "sweep"], "force re-runs the named stages"
    assert run(config("force=true", "stages=[sweep]"), run_dir).ran == ["sweep"]
    ledger = json.loads((run_dir / "stages.json").read_text())
    assert set(ledger) == {"data", "train", "sweep"}
    assert ledger["sweep"]["config"]["sweep"]["grid"] == [-1.0, 1.0]


def test_a_stage_without_its_inputs_says_which_to_add(tmp_path, smol):
    with pytest.raises(ConfigError, match=r"stage sweep needs the outputs of train .*stages=\[train, sweep\]"):
        run(config("stages=[sweep]"), tmp_path / "run")


def test_secrets_never_reach_the_config_dump_or_wandb(tmp_path, monkeypatch, smol):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    secret = "sk-test-0123456789abcdef"
    run_dir = tmp_path / "run"
    run(config("tracking.wandb=true", f"+judge.api_key={secret}", "stages=[train]"), run_dir)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline, "W&B must run offline without an API key"
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"secret leaked into {path}"
    assert "api_key: '***'" in (run_dir / "config.yaml").read_text()


def test_scrub_hides_nested_secret_keys():
    cfg = {"judge": {"api_key": "x", "model": "m"}, "hf_token": "t", "lr": 0.1, "tokenizer": "tok"}
    assert scrub(cfg) == {"judge": {"api_key": "***", "model": "m"}, "hf_token": "***", "lr": 0.1, "tokenizer": "tok"}


@pytest.mark.e2e
def test_cli_bad_config_exits_2_naming_the_key(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_py("layer=99", f"hydra.run.dir={run_dir}")
    assert_clean_failure(proc, "layer=99 is out of range")
    assert not run_dir.exists()
