"""A real ``accelerate launch`` with two CPU processes trains the same Δ as one process would."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import accelerate_launch, run_py

COMMON = [
    "stages=[train]",
    "intervention=lora",
    "objective=split",
    # a per-pair reduction: batch_token_mean reduces each process's micro-batch on its own, so two
    # processes of one pair each are not one batch of two (docs/training.md, "The loop")
    "objective.reduction=example_token_mean",
    "dataset.limit=2",
    "train.epochs=2",
    "device=cpu",
    "progress=false",
    "tracking.wandb=false",
]


@pytest.mark.e2e
@pytest.mark.slow
def test_two_cpu_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # one process, both pairs in one batch  vs  two processes, one pair each: DDP averages
    # the two gradients into the one-process gradient.
    run_py(*COMMON, "train.batch_size=2", f"hydra.run.dir={one}", check=True)
    more = ["train.batch_size=1", f"hydra.run.dir={two}"]
    run_py(*COMMON, *more, launcher=accelerate_launch(2), check=True)
    meta = json.loads((two / "intervention.json").read_text())
    assert meta["training"]["processes"] == 2 and meta["training"]["steps"] == 2
    assert json.loads((one / "intervention.json").read_text())["training"]["processes"] == 1
    expected, actual = (load_file(str(d / "intervention.safetensors")) for d in (one, two))
    assert torch.count_nonzero(actual["lora_B"]) > 0
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-6)
    losses = [pd.read_csv(d / "train_log.csv")["loss"].tolist() for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    # only the main process wrote: one ledger entry per stage, one log line per stage start
    assert set(json.loads((two / "stages.json").read_text())) == {"data", "train"}
    assert (two / "run.log").read_text().count("stage train: running") == 1
    assert not (two / "train_checkpoint.pt").exists()
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
