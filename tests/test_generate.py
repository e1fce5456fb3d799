"""Batched greedy generation against a hand-rolled greedy loop, and the cache of the model's own answers."""

from __future__ import annotations

import json

import pytest
import torch

import steer.own_answers as own
from steer.data import render_prompt
from steer.generate import greedy_generate, stop_ids
from steer.interventions import new_intervention
from steer.models import model_fingerprint
from tests.conftest import tiny_model

PROMPTS = ["Say hi.", "What is 2+2? Answer with a number only.", "Name a colour that is also a fruit, please."]


def tiny_lm(arch: str, vocab: int, seed: int = 0, dtype=torch.float32):
    """A random tiny model of ``arch`` whose vocabulary fits the SmolLM2 tokenizer."""
    return tiny_model(arch, seed, vocab_size=vocab).to(dtype)


def hand_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """One sequence, no padding, no KV cache: the full prefix every step, argmax, stop at EOS."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    stops = stop_ids(model, tokenizer)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if token in stops:
                break
            out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True)


@pytest.fixture(scope="module")
def tok(smol):
    return smol[1]


@pytest.fixture(scope="module")
def prompts(tok):
    return [render_prompt(tok, p) for p in PROMPTS]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_batched_left_padded_generation_equals_hand_rolled_loop(arch, tok, prompts):
    model = tiny_lm(arch, len(tok))
    lengths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) == len(prompts)  # rows of one batch really are padded
    expected = [hand_greedy(model, tok, p, 6) for p in prompts]
    assert greedy_generate(model, tok, prompts, 6, batch_size=3, progress=False) == expected
    assert greedy_generate(model, tok, prompts, 6, batch_size=1, progress=False) == expected


def test_generation_follows_an_attached_intervention(tok, prompts):
    model = tiny_lm("llama", len(tok))
    iv = new_intervention(model, "vector", 0, init_scale=1.0, seed=3)
    bare = greedy_generate(model, tok, prompts, 6, batch_size=3, progress=False)
    with iv.attached(model, multiplier=4.0):
        steered = greedy_generate(model, tok, prompts, 6, batch_size=3, progress=False)
        expected = [hand_greedy(model, tok, p, 6) for p in prompts]
    assert steered == expected
    assert steered != bare
    with iv.attached(model, multiplier=0.0):
        assert greedy_generate(model, tok, prompts, 6, batch_size=3, progress=False) == bare


def test_embedded_model_generation_stops_at_eos_and_matches_hand_loop(smol, prompts):
    model, tok = smol
    answers = greedy_generate(model, tok, prompts, 8, batch_size=2, progress=False)
    assert answers == [hand_greedy(model, tok, p, 8) for p in prompts]
    # "2 + 2 = 4" ends with <|im_end|> before the cap; the stop token is not in the text
    assert len(tok(answers[1], add_special_tokens=False)["input_ids"]) < 8
    assert "<|im_end|>" not in answers[1]


def test_generation_rejects_bad_arguments(smol, prompts):
    model, tok = smol
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, tok, prompts, 0)
    with pytest.raises(ValueError, match="tokenises to nothing"):
        greedy_generate(model, tok, [""], 4)


def test_fingerprint_tells_models_apart(tok):
    a, b = tiny_lm("llama", len(tok), seed=0), tiny_lm("llama", len(tok), seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(tiny_lm("llama", len(tok), seed=1))
    assert model_fingerprint(a) != model_fingerprint(tiny_lm("llama", len(tok), seed=0, dtype=torch.bfloat16))


def test_own_answers_are_generated_once_and_keyed_by_model_and_data(tok, prompts, tmp_path, monkeypatch):
    monkeypatch.setenv("STEER_CACHE", str(tmp_path))
    calls: list[list[str]] = []

    def counting(model, tokenizer, todo, *args):
        calls.append(list(todo))
        return greedy_generate(model, tokenizer, todo, *args)

    monkeypatch.setattr(own, "greedy_generate", counting)
    model = tiny_lm("llama", len(tok))
    first = own.own_answers(model, tok, prompts[:2], "data-a", 5, progress=False)
    assert calls == [prompts[:2]]
    assert first == [hand_greedy(model, tok, p, 5) for p in prompts[:2]]
    # the same prompts again: all from the cache; one more prompt: only that one is generated
    assert own.own_answers(model, tok, prompts[:2], "data-a", 5, progress=False) == first
    both = own.own_answers(model, tok, prompts, "data-a", 5, progress=False)
    assert calls == [prompts[:2], prompts[2:]]
    assert both[:2] == first
    cached = json.loads(own.cache_file(model_fingerprint(model), "data-a", 5).read_text())
    assert cached["answers"] == dict(zip(prompts, both, strict=True))
    # another model, another data file or another length cap never reads these answers
    own.own_answers(tiny_lm("llama", len(tok), seed=1), tok, prompts[:1], "data-a", 5, progress=False)
    own.own_answers(model, tok, prompts[:1], "data-b", 5, progress=False)
    own.own_answers(model, tok, prompts[:1], "data-a", 4, progress=False)
    assert len(calls) == 5
    assert len(list((tmp_path / "own_answers").iterdir())) == 4


def test_unreadable_cache_is_an_error_naming_the_file(tok, prompts, tmp_path, monkeypatch):
    monkeypatch.setenv("STEER_CACHE", str(tmp_path))
    model = tiny_lm("llama", len(tok))
    path = own.cache_file(model_fingerprint(model), "d", 3)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=str(path)):
        own.own_answers(model, tok, prompts[:1], "d", 3, progress=False)
