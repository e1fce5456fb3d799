"""A short training run with the per-form default settings steers the embedded model: mean test
PrefOdds at -m < at 0 < at +m, for every objective (fast: one form; slow: all nine)."""

from __future__ import annotations

import numpy as np
import pytest
from accelerate import Accelerator
from omegaconf import OmegaConf

from steer.core.interventions import new_intervention
from steer.core.metrics import encode_pair, pref_odds
from steer.core.sweep import grid_losses
from steer.datasets.sentiment import load
from steer.objectives import make_objective
from steer.objectives.training import TrainSettings, train_intervention
from steer.pairs import apply_limit, to_records
from steer.stages import compose_config

LAYER = 15
TABLE_M = {"vector": 8.0, "lora": 1.0, "local_weight": 1.0}


def defaults(form: str, objective: str):
    """The form's ``train`` settings and the objective's options, as the schema defaults them."""
    cfg = compose_config([f"intervention={form}", f"objective={objective}"])
    train, options = OmegaConf.to_container(cfg.train), OmegaConf.to_container(cfg.objective)
    options.pop("name")
    return train, make_objective(objective, options)


def pref_after_training(smol, form: str, objective: str, limit: int, epochs: int) -> list[float]:
    model, tokenizer = smol
    records = to_records(tokenizer, apply_limit(load(), limit))
    encoded = {
        split: [encode_pair(tokenizer, r.prompt_text, r.positive, r.negative) for r in records if r.split == split]
        for split in ("train", "test")
    }
    train, loss = defaults(form, objective)
    settings = TrainSettings(
        lr=train["lr"],
        epochs=epochs,
        batch_size=min(train["batch_size"], limit),
        train_factors=tuple(train["factors"]),
        grad_accum=train["grad_accum"],
        weight_decay=train["weight_decay"],
        grad_clip=train["grad_clip"],
    )
    iv = new_intervention(model, form, LAYER, rank=4, init_scale=train.get("init_scale", 0.0))
    train_intervention(model, encoded["train"], iv, loss, settings, Accelerator(cpu=True), progress=False)
    m = TABLE_M[form]
    losses = grid_losses(model, encoded["test"], iv, [-m, 0.0, m], progress=False)
    return [float(np.mean(pref_odds(at_m[:, 0], at_m[:, 1]))) for at_m in losses]


@pytest.mark.parametrize("objective", ["sft", "reps", "split"])
def test_short_training_steers_local_weight(smol, objective):
    down, bare, up = pref_after_training(smol, "local_weight", objective, limit=2, epochs=2)
    assert down < bare < up


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "reps", "split"])
@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_short_training_steers_every_combination(smol, form, objective):
    down, bare, up = pref_after_training(smol, form, objective, limit=8, epochs=2)
    assert down < bare < up
