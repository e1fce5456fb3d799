"""Batched generation against a hand-rolled greedy loop and against ``model.generate`` with a
hand-written steering hook, seeded sampling, and the cache of the model's own answers."""

from __future__ import annotations

import json

import pytest
import torch

import steer.core.own_answers as own
from steer.core.decode import sample_tokens, top_p_keep
from steer.core.generate import generate, greedy_generate, stop_ids
from steer.core.interventions import new_intervention
from steer.core.models import model_fingerprint
from steer.pairs import render_prompt
from tests.conftest import hand_hook, tiny_model

PROMPTS = ["Say hi.", "What is 2+2? Answer with a number only.", "Name a colour that is also a fruit, please."]


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
def tok(smol_tokenizer):
    return smol_tokenizer


@pytest.fixture(scope="module")
def prompts(tok):
    return [render_prompt(tok, p) for p in PROMPTS]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_batched_left_padded_generation_equals_hand_rolled_loop(arch, tok, prompts):
    model = tiny_model(arch, vocab_size=len(tok))
    lengths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) == len(prompts)  # rows of one batch really are padded
    expected = [hand_greedy(model, tok, p, 6) for p in prompts]
    assert greedy_generate(model, tok, prompts, 6, batch_size=3, progress=False) == expected
    assert greedy_generate(model, tok, prompts, 6, batch_size=1, progress=False) == expected


def test_generation_follows_an_attached_intervention(tok, prompts):
    model = tiny_model("llama", vocab_size=len(tok))
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
    a, b = tiny_model("llama", 0, vocab_size=len(tok)), tiny_model("llama", 0, vocab_size=len(tok))
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(tiny_model("llama", 1, vocab_size=len(tok)))
    assert model_fingerprint(a) != model_fingerprint(tiny_model("llama", 0, vocab_size=len(tok)).to(torch.bfloat16))


def test_own_answers_are_generated_once_and_keyed_by_model_and_data(tok, prompts, tmp_path, monkeypatch):
    monkeypatch.setenv("STEER_CACHE", str(tmp_path))
    calls: list[list[str]] = []

    def counting(model, tokenizer, todo, *args):
        calls.append(list(todo))
        return greedy_generate(model, tokenizer, todo, *args)

    monkeypatch.setattr(own, "greedy_generate", counting)
    model = tiny_model("llama", vocab_size=len(tok))
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
    own.own_answers(tiny_model("llama", 1, vocab_size=len(tok)), tok, prompts[:1], "data-a", 5, progress=False)
    own.own_answers(model, tok, prompts[:1], "data-b", 5, progress=False)
    own.own_answers(model, tok, prompts[:1], "data-a", 4, progress=False)
    assert len(calls) == 5
    assert len(list((tmp_path / "own_answers").iterdir())) == 4


def test_unreadable_cache_is_an_error_naming_the_file(tok, prompts, tmp_path, monkeypatch):
    monkeypatch.setenv("STEER_CACHE", str(tmp_path))
    model = tiny_model("llama", vocab_size=len(tok))
    path = own.cache_file(model_fingerprint(model), "d", 3)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=str(path)):
        own.own_answers(model, tok, prompts[:1], "d", 3, progress=False)


# --- steered generation: generate() -------------------------------------------------------------

MS = (-6.0, 0.0, 6.0)


def hf_generate(model, tok, prompts, max_new_tokens: int) -> list[tuple[int, ...]]:
    """``model.generate``, greedy, on the tokenizer's own left padding; each row cut at its first stop."""
    from transformers import GenerationConfig

    stops = stop_ids(model, tok)
    enc = tok(list(prompts), add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tok.pad_token_id
    )
    with torch.inference_mode():
        out = model.generate(**enc, generation_config=config)
    rows = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        cut = next((k for k, t in enumerate(row) if t in stops), len(row))
        rows.append(tuple(row[:cut]))
    return rows


def steerable(form: str, vocab: int):
    model = tiny_model("llama", vocab_size=vocab)
    iv = new_intervention(model, form, 1, rank=4, init_scale=1.0, seed=3)
    if form == "lora":  # lora_B starts at zero: give it a value so the update does something
        with torch.no_grad():
            iv.lora_B.copy_(torch.randn(iv.lora_B.shape, generator=torch.Generator().manual_seed(5)))
    return model, iv


@pytest.mark.parametrize("form", ["vector", "lora"])
def test_several_multipliers_in_one_batch_equal_generate_with_a_hand_written_hook(form, tok, prompts):
    model, iv = steerable(form, len(tok))
    found = generate(
        model, tok, prompts, intervention=iv, multipliers=MS, max_new_tokens=6, batch_size=9, progress=False
    )
    assert [(g.prompt_index, g.m) for g in found] == [(p, m) for p in range(len(prompts)) for m in MS]
    tensors = iv.tensors()
    for m in MS:
        handle = hand_hook(model, form, 1, tensors, m)
        try:
            expected = hf_generate(model, tok, prompts, 6)
        finally:
            handle.remove()
        assert [g.token_ids for g in found if g.m == m] == expected
        assert [g.text for g in found if g.m == m] == [tok.decode(e, skip_special_tokens=True) for e in expected]
    by_m = {m: [g.token_ids for g in found if g.m == m] for m in MS}
    assert by_m[-6.0] != by_m[0.0] != by_m[6.0]  # the multipliers really steer
    assert iv._handle is None  # detached again


def test_m_zero_is_the_bare_model_and_the_multiplier_is_restored(tok, prompts):
    model, iv = steerable("vector", len(tok))
    iv.set_multiplier(2.5)
    bare = generate(model, tok, prompts, max_new_tokens=5, batch_size=2, progress=False)
    steered = generate(model, tok, prompts, intervention=iv, multipliers=[0.0, 3.0], max_new_tokens=5, progress=False)
    assert [(g.token_ids, g.text) for g in steered if g.m == 0.0] == [(g.token_ids, g.text) for g in bare]
    assert [g.token_ids for g in steered if g.m == 3.0] != [g.token_ids for g in bare]
    assert iv.multiplier == 2.5 and iv._handle is None
    assert greedy_generate(model, tok, prompts, 5, progress=False) == [g.text for g in bare]


def test_max_new_tokens_caps_rows_and_eos_stops_a_row_mid_batch(tok, prompts):
    model = tiny_model("llama", vocab_size=len(tok))
    free = generate(model, tok, prompts, max_new_tokens=7, batch_size=3, progress=False)
    assert all(g.n_tokens == 7 and not g.stopped_by_eos for g in free)  # a random model never says <|im_end|>
    # make the third token of prompt 0 a stop token: that row leaves the batch, the others go on
    model.generation_config.eos_token_id = free[0].token_ids[2]
    stops = stop_ids(model, tok)
    found = generate(model, tok, prompts, max_new_tokens=7, batch_size=3, progress=False)
    assert found[0].token_ids == free[0].token_ids[:2] and found[0].stopped_by_eos
    assert [g.token_ids for g in found] == hf_generate(model, tok, prompts, 7)
    for g in found:
        assert not set(g.token_ids) & set(stops)
        assert g.stopped_by_eos == (g.n_tokens < 7)


def test_sampling_is_seeded_and_independent_of_batching(tok, prompts):
    model, iv = steerable("vector", len(tok))
    kw = dict(intervention=iv, multipliers=MS, max_new_tokens=6, do_sample=True, top_p=0.9, progress=False)
    one = generate(model, tok, prompts, batch_size=2, seed=7, **kw)
    assert generate(model, tok, prompts, batch_size=9, seed=7, **kw) == one
    # a prompt's samples do not depend on the other prompts in the list either
    alone = generate(model, tok, prompts[2:], batch_size=3, seed=7, **kw)
    assert [(g.m, g.token_ids) for g in alone] == [(g.m, g.token_ids) for g in one if g.prompt_index == 2]
    other = generate(model, tok, prompts, batch_size=9, seed=8, **kw)
    assert [g.token_ids for g in other] != [g.token_ids for g in one]
    greedy = generate(model, tok, prompts, batch_size=9, **{**kw, "do_sample": False})
    assert [g.token_ids for g in greedy] != [g.token_ids for g in one]


def test_resumable_generation_reuses_finished_chunks_and_equals_one_pass(tok, prompts, tmp_path, caplog):
    model, iv = steerable("vector", len(tok))
    kw = dict(intervention=iv, multipliers=[0.0, 4.0], max_new_tokens=6, batch_size=2, do_sample=True, seed=3)
    whole = generate(model, tok, prompts, progress=False, **kw)
    parts = tmp_path / "parts"
    first = generate(model, tok, prompts, progress=False, parts_dir=parts, key="run", **kw)
    assert first == whole  # one prompt per chunk (2 rows / 2 multipliers): three chunks on disk
    kept = sorted(parts.glob("*.parquet"))
    assert len(kept) == 3
    kept[1].unlink()  # as if the run had been killed before its second chunk was written
    with caplog.at_level("INFO", logger="steer"):
        again = generate(model, tok, prompts, progress=False, parts_dir=parts, key="run", **kw)
    assert again == whole
    assert "generate: computed 1 of 3 chunks, 2 resumed" in caplog.text
    # another key, intervention or setting is another computation: nothing of the old one is reused
    iv.delta_b.data.add_(1.0)
    changed = generate(model, tok, prompts, progress=False, parts_dir=parts, key="run", **kw)
    assert [g.token_ids for g in changed if g.m == 4.0] != [g.token_ids for g in whole if g.m == 4.0]
    assert [g for g in changed if g.m == 0.0] == [g for g in whole if g.m == 0.0]


def test_top_p_nucleus_matches_transformers_warper():
    from transformers import TopPLogitsWarper

    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0)) * 3
    for top_p in (0.05, 0.5, 0.9, 0.999):
        theirs = TopPLogitsWarper(top_p)(None, logits.clone()) > -float("inf")
        for k in (2, 256):  # k=2 ranks too few tokens for most rows: the ranking must widen
            kept, order = top_p_keep(torch.softmax(logits, -1), top_p, k=k)
            mine = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, kept > 0)
            assert torch.equal(mine, theirs), (top_p, k)


def test_inverse_cdf_sampling_draws_each_kept_token_with_its_renormalised_probability():
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, 0.0]])
    temperature, top_p, n = 0.7, 0.8, 20000
    probs = torch.softmax(logits[0] / temperature, -1).double()
    ranked = probs.argsort(descending=True)
    mass = probs[ranked].cumsum(0) - probs[ranked]
    nucleus = ranked[mass < top_p]
    expected = torch.zeros_like(probs)
    expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
    uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # an even grid over [0, 1)
    tokens = sample_tokens(logits.expand(n, -1), uniforms, temperature, top_p)
    freq = torch.bincount(tokens, minlength=5).double() / n
    assert torch.allclose(freq, expected, atol=2 / n)
    full = torch.bincount(sample_tokens(logits.expand(n, -1), uniforms, temperature, 1.0), minlength=5).double() / n
    assert torch.allclose(full, probs, atol=2 / n)


def test_generate_rejects_bad_arguments_with_the_argument_named(tok, prompts):
    model, iv = steerable("vector", len(tok))
    bad = [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(batch_size=0), "batch_size"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(do_sample=True, temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(multipliers=[]), "multipliers is empty"),
        (dict(multipliers=[1.0]), "need an intervention"),
        (dict(intervention=iv, multipliers=[float("nan")]), "finite"),
        (dict(intervention=iv, multipliers=[1e38]), r"too large.*\|m\| <= [0-9.e+]+ for vector at layer 1"),
        (dict(intervention=[iv, iv], multipliers=[(1.0, 2.0)]), "composed with itself"),
        (dict(intervention=[iv, steerable("lora", len(tok))[1]], multipliers=[1.0]), "one m per intervention"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            generate(model, tok, prompts, progress=False, **kwargs)
    with iv.attached(model), pytest.raises(RuntimeError, match="already attached"):
        generate(model, tok, prompts, intervention=iv, multipliers=1.0, progress=False)


def test_composed_interventions_equal_their_hand_written_hooks_and_runs_at_one_site_add(tok, prompts):
    """Two vectors at one layer and a LoRA at another, each at its own m, in one batch: the same
    tokens as ``model.generate`` under the three hand-written hooks; with a run at 0, the others alone."""
    model, lora = steerable("lora", len(tok))
    a, b = (new_intervention(model, "vector", 2, init_scale=1.0, seed=s) for s in (11, 12))
    ms = [(3.0, -2.0, 4.0), (3.0, 0.0, 0.0), (0.0, -2.0, 4.0)]
    found = generate(
        model, tok, prompts, intervention=[a, b, lora], multipliers=ms, max_new_tokens=6, batch_size=9, progress=False
    )
    for m in ms:
        handles = [hand_hook(model, "vector", 2, iv.tensors(), x) for iv, x in ((a, m[0]), (b, m[1]))]
        handles.append(hand_hook(model, "lora", 1, lora.tensors(), m[2]))
        try:
            expected = hf_generate(model, tok, prompts, 6)
        finally:
            for handle in handles:
                handle.remove()
        assert [g.token_ids for g in found if g.m == m] == expected, m
    alone = generate(model, tok, prompts, intervention=a, multipliers=3.0, max_new_tokens=6, progress=False)
    assert [g.token_ids for g in found if g.m == ms[1]] == [g.token_ids for g in alone]
    assert len({tuple(g.token_ids for g in found if g.m == m) for m in ms}) == 3  # each run really steers
    assert a._handle is b._handle is lora._handle is None
