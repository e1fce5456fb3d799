"""The unified intervention: m = 0 is the bare model, each form equals a hand-written hook,
per-row multipliers, and the save/load round trip through the files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from steer.core.interventions import DynamicAffine, new_intervention
from steer.rundir import META, WEIGHTS
from tests.conftest import hand_hook, randomised, tiny_model

FORMS = ["local_weight", "lora", "vector"]
LAYER = 15


def prompt_ids(tok, text="Tell me about your favourite film.") -> torch.Tensor:
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return torch.tensor([tok(rendered + "It was great.", add_special_tokens=False)["input_ids"]])


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("form", FORMS)
def test_zero_multiplier_is_the_bare_model_bit_for_bit(smol, form):
    model, tok = smol
    ids = prompt_ids(tok)
    bare = logits(model, ids)
    iv = randomised(model, form, LAYER)
    with iv.attached(model, multiplier=0.0):
        steered = logits(model, ids)
    assert torch.equal(steered, bare)
    with iv.attached(model, multiplier=2.0):
        assert not torch.allclose(logits(model, ids), bare)
    assert torch.equal(logits(model, ids), bare), "detach must restore the bare model"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("m", [-3.0, 0.5, 2.0])
def test_each_form_equals_a_hand_written_hook(smol, tmp_path, form, m):
    model, tok = smol
    ids = prompt_ids(tok)
    iv = randomised(model, form, LAYER)
    iv.save(tmp_path)
    handle = hand_hook(model, form, LAYER, load_file(str(tmp_path / WEIGHTS)), m)
    try:
        want = logits(model, ids)
    finally:
        handle.remove()
    with DynamicAffine.load(tmp_path).attached(model, multiplier=m):
        got = logits(model, ids)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, logits(model, ids), atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("form", FORMS)
def test_forms_on_every_supported_architecture(arch, form):
    model = tiny_model(arch)
    ids = torch.tensor([[5, 17, 33, 2, 90, 11, 7]])
    iv = randomised(model, form, 2, scale=0.5)
    bare = logits(model, ids)
    with iv.attached(model, multiplier=0.0):
        assert torch.equal(logits(model, ids), bare)
    handle = hand_hook(model, form, 2, iv.tensors(), 1.5)
    try:
        want = logits(model, ids)
    finally:
        handle.remove()
    with iv.attached(model, multiplier=1.5):
        assert torch.allclose(logits(model, ids), want, atol=1e-5)


@pytest.mark.parametrize("form", ["local_weight", "vector"])
def test_per_row_multiplier_equals_separate_runs(form):
    model = tiny_model("llama")
    ids = torch.tensor([[5, 17, 33, 2, 90], [8, 9, 10, 11, 12], [40, 41, 42, 43, 44]])
    iv = randomised(model, form, 1, scale=0.5)
    ms = [-2.0, 0.0, 3.0]
    with iv.attached(model, multiplier=torch.tensor(ms)):
        batched = logits(model, ids)
    for row, m in enumerate(ms):
        with iv.attached(model, multiplier=m):
            assert torch.allclose(batched[row], logits(model, ids[row : row + 1])[0], atol=1e-5)


def test_separate_bias_multiplier():
    model = tiny_model("llama")
    ids = torch.tensor([[5, 17, 33, 2, 90]])
    iv = randomised(model, "local_weight", 1, scale=0.5)
    tensors = iv.tensors()
    weight_only = {"delta_w": tensors["delta_w"], "delta_b": torch.zeros_like(tensors["delta_b"])}
    handle = hand_hook(model, "local_weight", 1, weight_only, 2.0)
    try:
        want = logits(model, ids)
    finally:
        handle.remove()
    with iv.attached(model):
        iv.set_multiplier(2.0, m_bias=0.0)
        assert torch.allclose(logits(model, ids), want, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_save_load_round_trip_through_the_files(smol, tmp_path, form):
    model, tok = smol
    iv = randomised(model, form, LAYER)
    iv.info.model, iv.info.objective = "smollm2-135m", "test"
    iv.save(tmp_path)
    meta = json.loads((tmp_path / META).read_text())
    assert meta["form"] == form and meta["layer"] == LAYER and meta["model"] == "smollm2-135m"
    assert meta["site"] == ("residual" if form == "vector" else "mlp.down_proj")
    saved = load_file(str(tmp_path / WEIGHTS))
    expected = {
        "local_weight": {"delta_w": [576, 1536], "delta_b": [576]},
        "lora": {"lora_A": [4, 1536], "lora_B": [576, 4]},
        "vector": {"delta_b": [576]},
    }[form]
    assert {k: list(v.shape) for k, v in saved.items()} == expected == meta["shapes"]
    loaded = DynamicAffine.load(tmp_path)
    want = {
        "local_weight": lambda: (saved["delta_w"], saved["delta_b"]),
        "lora": lambda: (saved["lora_B"] @ saved["lora_A"], None),
        "vector": lambda: (None, saved["delta_b"]),
    }[form]()
    for got, expected in zip(loaded.dense_update(), want, strict=True):
        assert (got is None and expected is None) or torch.equal(got, expected)
    ids = prompt_ids(tok)
    with iv.attached(model, multiplier=1.5):
        want = logits(model, ids)
    with loaded.attached(model, multiplier=1.5):
        assert torch.equal(logits(model, ids), want)


def test_load_rejects_wrong_tensors(tmp_path):
    model = tiny_model("llama")
    iv = randomised(model, "lora", 1)
    iv.save(tmp_path)
    save_file({"delta_b": torch.zeros(32)}, str(tmp_path / WEIGHTS))
    with pytest.raises(ValueError, match="lora_A"):
        DynamicAffine.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="train stage"):
        DynamicAffine.load(tmp_path / "missing")


def test_attach_rejects_a_model_of_another_shape(smol):
    model, _ = smol
    iv = randomised(tiny_model("llama"), "vector", 1)
    with pytest.raises(ValueError, match="does not fit"):
        iv.attach(model)


def test_unknown_form_and_layer_out_of_range():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="intervention.form='bias'"):
        new_intervention(model, "bias", 1)
    with pytest.raises(IndexError, match="layer=4 is out of range"):
        new_intervention(model, "vector", 4)
