"""The foundation's end-to-end contract, through the command line a researcher types:

    python run.py stages=[train,sweep] dataset.limit=8 sweep.grid=[-4,0,4] hydra.run.dir=DIR

and the losses it writes checked against computations that share no code with steer's engine.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from steer.core.interventions import DynamicAffine
from steer.core.sweep import sweep
from steer.pairs import read_pairs
from tests.conftest import hand_hook, randomised, reference_logprob, run_py

pytestmark = pytest.mark.e2e  # every test reads the run that run.py writes


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    overrides = ["stages=[train,sweep]", "dataset.limit=8", "sweep.grid=[-4,0,4]", f"hydra.run.dir={out}"]
    proc = run_py(*overrides, "tracking.wandb=false", check=True)
    assert "Mean log-odds per multiplier m" in proc.stdout and str(out) in proc.stdout
    return out


def plain_loss(model, tok, prompt_text: str, answer: str) -> float:
    """−Σ log p(answer) with plain transformers on one unpadded sequence, from the raw strings."""
    prompt = tok(prompt_text, add_special_tokens=False)["input_ids"]
    return -reference_logprob(model, prompt + tok(answer, add_special_tokens=False)["input_ids"], len(prompt))


def assert_plain_losses(frame: pd.DataFrame, records, m: float, model, tok) -> None:
    """Every record's losses at m in ``frame`` (indexed by example_id, m) equal ``plain_loss``
    with the model as it is now (a hand-written hook attached, or bare)."""
    for record in records:
        row = frame.loc[(record.example_id, m)]
        assert row.loss_pos == pytest.approx(plain_loss(model, tok, record.prompt_text, record.positive), abs=1e-3)
        assert row.loss_neg == pytest.approx(plain_loss(model, tok, record.prompt_text, record.negative), abs=1e-3)


def test_cli_writes_the_output_contract(run_dir):
    for name in ("intervention.safetensors", "intervention.json", "pairs.jsonl", "sweep.parquet"):
        assert (run_dir / name).is_file(), name
    pairs = [json.loads(line) for line in (run_dir / "pairs.jsonl").read_text().splitlines()]
    assert {k for p in pairs for k in p} >= {"split", "example_id", "prompt_text", "positive", "negative"}
    assert sum(p["split"] == "train" for p in pairs) == 8 and sum(p["split"] == "test" for p in pairs) == 8
    assert all(p["prompt_text"].endswith("<|im_start|>assistant\n") for p in pairs)
    frame = pd.read_parquet(run_dir / "sweep.parquet")
    assert list(frame.columns) == ["split", "example_id", "m", "loss_pos", "loss_neg", "pref_odds", "util_odds"]
    assert len(frame) == 16 * 3 and sorted(frame.m.unique()) == [-4.0, 0.0, 4.0]
    meta = json.loads((run_dir / "intervention.json").read_text())
    assert meta["form"] == "vector" and meta["site"] == "residual" and meta["layer"] == 15
    assert meta["objective"] == "diffmean" and meta["model"] == "smollm2-135m"


def test_losses_at_zero_equal_plain_transformers(run_dir, smol):
    model, tok = smol
    frame = pd.read_parquet(run_dir / "sweep.parquet").set_index(["example_id", "m"])
    assert_plain_losses(frame, read_pairs(run_dir / "pairs.jsonl"), 0.0, model, tok)


def test_losses_at_nonzero_m_equal_a_hand_written_hook(run_dir, smol):
    model, tok = smol
    frame = pd.read_parquet(run_dir / "sweep.parquet").set_index(["example_id", "m"])
    tensors = load_file(str(run_dir / "intervention.safetensors"))
    records = read_pairs(run_dir / "pairs.jsonl")[::4]
    for m in (-4.0, 4.0):
        handle = hand_hook(model, "vector", 15, tensors, m)
        try:
            assert_plain_losses(frame, records, m, model, tok)
        finally:
            handle.remove()


def test_diffmean_vector_is_the_mean_activation_difference(run_dir, smol):
    model, tok = smol
    captured = []
    handle = model.model.layers[15].register_forward_hook(lambda mod, args, out: captured.append(out[0]))
    sums = {"pos": 0.0, "neg": 0.0}
    counts = {"pos": 0, "neg": 0}
    try:
        for record in read_pairs(run_dir / "pairs.jsonl"):
            if record.split != "train":
                continue
            n_prompt = len(tok(record.prompt_text, add_special_tokens=False)["input_ids"])
            for key, answer in (("pos", record.positive), ("neg", record.negative)):
                ids = tok(record.prompt_text, add_special_tokens=False)["input_ids"]
                ids += tok(answer, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    model(torch.tensor([ids]))
                sums[key] = sums[key] + captured.pop()[n_prompt:].double().sum(0)
                counts[key] += len(ids) - n_prompt
    finally:
        handle.remove()
    want = sums["pos"] / counts["pos"] - sums["neg"] / counts["neg"]
    got = DynamicAffine.load(run_dir).delta_b.double()
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("form", ["local_weight", "lora"])
def test_weight_forms_in_the_sweep_equal_a_hand_written_hook(run_dir, smol, tmp_path, form):
    model, tok = smol
    records = read_pairs(run_dir / "pairs.jsonl")[:3]
    randomised(model, form, 15).save(tmp_path)
    iv = DynamicAffine.load(tmp_path)
    frame = sweep(model, tok, records, iv, [-1.0, 0.0, 2.0], progress=False).set_index(["example_id", "m"])
    tensors = load_file(str(tmp_path / "intervention.safetensors"))
    for m in (-1.0, 0.0, 2.0):
        handle = hand_hook(model, form, 15, tensors, m)
        try:
            assert_plain_losses(frame, records, m, model, tok)
        finally:
            handle.remove()
