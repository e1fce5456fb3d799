"""Two jobs whose configs differ in a fingerprinted key never share a run directory; the default
job writes where it always did."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from steer import rundir
from steer.runtime.resolvers import MAX_VARIANT, variant_dirname, variant_overrides
from steer.stages import STAGES, compose_config
from steer.stages.runner import fingerprinted
from tests.conftest import run_py

KEYS = fingerprinted(STAGES)
CHOICES = {"intervention": "vector", "objective": "sft", "dataset": "sentiment", "model": "smollm2-135m"}


def test_fingerprinted_keys_come_from_the_stages():
    keys, ignore = KEYS
    assert {"dataset", "intervention", "objective", "seed", "sweep", "fit", "judge"} <= set(keys)
    assert "sweep.batch_size" in ignore and not {"progress", "tracking", "node", "force", "device"} & set(keys)


def test_the_default_job_keeps_its_run_directory():
    cfg = compose_config([], return_hydra_config=True)
    assert cfg.hydra.run.dir == f"outputs/{cfg.run_id}"
    assert cfg.hydra.sweep.subdir == cfg.run_id
    # keys outside every fingerprint, group choices and the layer (in the run id) keep the path too
    quiet = ["progress=false", "tracking.wandb=false", "device=cpu", "force=true", "sweep.batch_size=4"]
    cfg = compose_config([*quiet, "intervention=lora", "layer=3"], return_hydra_config=True)
    assert cfg.hydra.run.dir == f"outputs/{cfg.run_id}" and cfg.run_id.endswith("lora-diffmean/layer3")


def test_a_fingerprinted_override_gets_its_own_directory():
    a = compose_config(["objective=sft", "train.lr=0.01", "dataset.limit=4"], return_hydra_config=True)
    b = compose_config(["objective=sft", "train.lr=0.02", "dataset.limit=4"], return_hydra_config=True)
    assert a.hydra.run.dir == f"outputs/{a.run_id}/dataset.limit=4,train.lr=0.01"
    assert a.hydra.run.dir != b.hydra.run.dir and a.hydra.sweep.subdir != b.hydra.sweep.subdir


def test_variant_names():
    overrides = ["objective=split", "progress=false", "objective.gamma=4", "seed=1", "dataset.path=/a/b.jsonl"]
    variant = variant_overrides(overrides, CHOICES, *KEYS)
    assert variant == {"dataset.path": "/a/b.jsonl", "objective.gamma": "4", "seed": "1"}
    assert variant_dirname(variant) == "/dataset.path=_a_b.jsonl,objective.gamma=4,seed=1"
    assert variant_dirname({}) == ""
    long = {f"objective.k{i}": "0.123456789" for i in range(12)}
    name = variant_dirname(long)
    assert name.startswith("/h-") and len(name) < MAX_VARIANT
    assert name != variant_dirname({**long, "objective.k0": "0.2"})


def multirun(tmp_path: Path, *extra: str) -> list[Path]:
    out = tmp_path / "out"
    args = ["objective=sft", "train.lr=0.01,0.02", "dataset.limit=2", "stages=[train]"]
    args += ["train.epochs=1", f"output_root={out}", "progress=false", "tracking.wandb=false"]
    run_py("-m", *args, *extra, timeout=900, check=True)
    return sorted(p.parent for p in out.rglob(rundir.WEIGHTS))


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=node", "node.jobs=2"]], ids=["basic", "node"])
def test_a_multirun_over_the_learning_rate_keeps_both_jobs(tmp_path, launcher):
    runs = multirun(tmp_path, *launcher)
    assert [p.name for p in runs] == [
        "dataset.limit=2,train.epochs=1,train.lr=0.01",
        "dataset.limit=2,train.epochs=1,train.lr=0.02",
    ]
    for run, lr in zip(runs, ("0.01", "0.02"), strict=True):
        assert rundir.read_overrides(run)["train.lr"] == lr
        assert rundir.read_config(run)["train"]["lr"] == float(lr)
    a, b = (load_file(run / rundir.WEIGHTS)["delta_b"] for run in runs)
    assert (a - b).abs().max() > 0  # two trainings, not one file written twice


def test_reports_label_two_runs_of_one_cell_by_the_keys_that_differ(tmp_path):
    import pandas as pd

    from steer.report.front import build_front
    from tests.test_front_bootstrap import write_run

    for lr in ("0.01", "0.02"):
        run_dir = tmp_path / "sentiment" / f"lr{lr}"
        write_run(run_dir)
        rundir.write_overrides(run_dir, {"dataset.limit": "4", "train.lr": lr})
    build_front(tmp_path, deltas=[0.5])
    table = pd.read_csv(tmp_path / "reports" / "front.csv")
    assert sorted(table["variant"]) == ["train.lr=0.01", "train.lr=0.02"]
    assert "| train.lr=0.02 |" in (tmp_path / "reports" / "front.md").read_text().replace("  ", "")
