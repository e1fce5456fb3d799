"""A form and an objective registered from outside the package, in this file alone, work like
the built-in ones: checked before the run, hooked at their site, trained, swept and fitted
through ``steer.stages.run`` (what ``run.py`` calls) with no edit to steer/ or steer/conf/."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from steer.core.forms import FORMS, Vector
from steer.core.interventions import DynamicAffine, new_intervention
from steer.core.metrics import encode_pair
from steer.core.sweep import pair_losses
from steer.objectives import OBJECTIVES, Loss, Side
from steer.rundir import read_fit, read_meta, read_pairs, read_sweep
from steer.stages import ConfigError, check, compose_config, run
from tests.conftest import assert_refused, tiny_model


class AttnOutputBias(Vector):
    """Δb added to the output of layer l's attention output projection (before the residual add):
    the vector form's tensors, init and Δh at another site."""

    name = "attn_bias"
    site = "self_attn.o_proj"


@dataclass(frozen=True)
class Margin(Loss):
    """−log σ(β·(log p(winner) − log p(loser))): a preference margin with no reference model."""

    name = "margin"
    beta: float = 1.0

    def __call__(self, win: Side, lose: Side) -> torch.Tensor:
        return -F.logsigmoid(self.beta * (win.logp - lose.logp)).mean()


@pytest.fixture
def registered(monkeypatch):
    """The two registry lines a user writes (undone after the test)."""
    monkeypatch.setitem(FORMS, "attn_bias", AttnOutputBias())
    monkeypatch.setitem(OBJECTIVES, "margin", Margin)


# The vector form's config with the toy form's name; the toy objective's own config (its fields).
TOY = ["intervention=vector", "intervention.form=attn_bias", "objective=margin", "objective.beta=2.0"]
FAST = ["dataset.limit=4", "tracking.wandb=false", "progress=false"]


def test_toy_form_adds_m_times_b_to_the_attention_output(registered):
    model = tiny_model("llama")
    iv = new_intervention(model, "attn_bias", 2, init_scale=1.0, seed=3)
    assert iv.info.d_out == model.config.hidden_size and iv.info.site == "self_attn.o_proj"
    ids = torch.tensor([[5, 9, 17, 33, 2, 8]])
    with torch.no_grad():
        bare = model(ids).logits
        with iv.attached(model, multiplier=0.0):
            assert torch.equal(model(ids).logits, bare)
        with iv.attached(model, multiplier=1.5):
            steered = model(ids).logits
        b = iv.tensors()["delta_b"]
        handle = model.model.layers[2].self_attn.o_proj.register_forward_hook(lambda mod, a, out: out + 1.5 * b)
        try:
            by_hand = model(ids).logits
        finally:
            handle.remove()
    assert not torch.allclose(steered, bare)
    assert torch.allclose(steered, by_hand, atol=1e-6)
    delta_w, delta_b = iv.dense_update()
    assert delta_w is None and torch.equal(delta_b.detach(), b)


def test_toy_objective_and_form_are_checked_like_built_in_ones(registered, tmp_path):
    check(compose_config([*FAST, *TOY]))  # accepted as it is
    with pytest.raises(ConfigError, match="objective.beta=sharp: Value 'sharp'"):  # the schema types it
        compose_config([*FAST, *TOY, "objective.beta=sharp"])
    assert_refused(
        compose_config([*FAST, "intervention.form=attn_bias", "objective=diffmean"]),
        tmp_path / "b",
        re.escape("objective=diffmean trains only intervention=vector, not intervention=attn_bias"),
    )


def test_unregistered_names_are_refused(tmp_path):
    assert_refused(compose_config([*FAST, *TOY[:2]]), tmp_path / "run", "intervention.form='attn_bias' is not one of")


@pytest.mark.slow
def test_toy_form_and_objective_train_sweep_fit_through_run(registered, tmp_path, smol):
    model, tok = smol
    grid = "[-8,-4,-2,-1,0,1,2,4,8]"  # nine multipliers: as many as the preference model's parameters
    cfg = compose_config([*FAST, *TOY, f"sweep.grid={grid}", "train.epochs=2", "train.batch_size=2"])
    run_dir = tmp_path / "run"
    assert run(cfg, run_dir).ran == ["data", "train", "sweep", "fit"]
    meta = read_meta(run_dir)
    assert (meta["form"], meta["site"], meta["objective"]) == ("attn_bias", "self_attn.o_proj", "margin")
    assert meta["training"]["steps"] == 4  # 4 pairs / batch 2 × 2 epochs
    assert DynamicAffine.load(run_dir).delta_b.abs().sum() > 0
    frame = read_sweep(run_dir)
    records = read_pairs(run_dir)
    bare = pair_losses(model, [encode_pair(tok, r.prompt_text, r.positive, r.negative) for r in records])
    at_zero = frame[frame.m == 0.0]
    assert np.allclose(at_zero[["loss_pos", "loss_neg"]].to_numpy(), bare, atol=1e-4)  # m = 0 is the bare model
    assert not np.allclose(frame[frame.m == 8.0][["loss_pos", "loss_neg"]].to_numpy(), bare, atol=1e-3)
    fit = read_fit(run_dir)
    assert {"pref", "util", "regions"} <= set(fit) and fit["pref"]["train"]["params"].keys() >= {"alpha", "beta"}
    assert run(cfg, run_dir).ran == []  # finished: skipped like any run
