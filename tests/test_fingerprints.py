"""A stage's fingerprint covers exactly the keys it reads, at any depth (``steer.stages.runner``)."""

from __future__ import annotations

from steer.stages import STAGES, compose_config
from steer.stages.runner import Fingerprints, config_subset

JUDGE = next(s for s in STAGES if s.name == "judge")
TRAIN = next(s for s in STAGES if s.name == "train")


def fingerprint(tmp_path, stage, *overrides: str) -> str:
    cfg = compose_config(["stages=[train,sweep,fit,judge]", *overrides])
    return Fingerprints(cfg, tmp_path, STAGES).of(stage)


def test_an_ignored_key_three_levels_deep_leaves_the_judge_fingerprint(tmp_path):
    """judge.generation.batch_size (declared ignored) does not re-run the judge; a key it reads does."""
    base = fingerprint(tmp_path, JUDGE)
    assert fingerprint(tmp_path, JUDGE, "judge.generation.batch_size=3") == base
    assert fingerprint(tmp_path, JUDGE, "judge.concurrency=1", "sweep.batch_size=4") == base
    assert fingerprint(tmp_path, JUDGE, "judge.generation.max_new_tokens=9") != base
    assert fingerprint(tmp_path, JUDGE, "judge/select=fixed", "judge.select.m=2") != base


def test_config_subset_drops_ignored_keys_at_any_depth():
    cfg = compose_config(["objective=sft"])
    subset = config_subset(cfg, ("judge", "train"), ("judge.generation.batch_size", "judge.select", "train"))
    assert "batch_size" not in subset["judge"]["generation"] and "max_new_tokens" in subset["judge"]["generation"]
    assert "select" not in subset["judge"] and "train" not in subset


def test_the_train_stage_reads_its_own_batch_size_not_the_sweeps(tmp_path):
    """train.init=diffmean estimates in batches of train.batch_size: sweep.batch_size is not the train's."""
    assert "sweep" not in " ".join(TRAIN.keys)
    base = fingerprint(tmp_path, TRAIN, "objective=sft", "train.init=diffmean")
    assert fingerprint(tmp_path, TRAIN, "objective=sft", "train.init=diffmean", "sweep.batch_size=4") == base
    assert fingerprint(tmp_path, TRAIN, "objective=sft", "train.init=diffmean", "train.batch_size=4") != base
