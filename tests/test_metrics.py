"""PrefOdds / UtilOdds against closed forms, and answer log-likelihoods against plain transformers."""

from __future__ import annotations

import decimal
import math

import numpy as np
import pytest
import torch

from steer.core.metrics import UTIL_EPS, encode, pref_odds, util_odds
from tests.conftest import reference_logprob, tiny_model


def util_odds_decimal(lp: float, ln: float) -> float:
    """UtilOdds with 60 significant digits: an independent reference."""
    ctx = decimal.Context(prec=60)
    pu = ctx.exp(ctx.minus(decimal.Decimal(lp))) + ctx.exp(ctx.minus(decimal.Decimal(ln)))
    return float(ctx.ln(pu / (1 - pu)))


LOSSES = [1e-6, 1e-3, 0.1, 0.7, 1.0, 3.0, 10.0, 50.0, 300.0, 1e3]


@pytest.mark.parametrize("lp", LOSSES)
@pytest.mark.parametrize("ln", [1e-3, 0.5, 2.0, 40.0, 1e3])
def test_util_odds_matches_high_precision(lp, ln):
    pu = math.exp(-lp) + math.exp(-ln)
    got = float(util_odds(lp, ln))
    assert np.isfinite(got)
    if pu < 1 - 1e-9:
        want = util_odds_decimal(lp, ln)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    else:  # P_u at or past 1: saturates at the documented cap
        assert got == pytest.approx(math.log((1 - UTIL_EPS) / UTIL_EPS), rel=1e-6)


def test_util_odds_is_finite_and_vectorised_over_the_whole_range():
    grid = np.array(LOSSES)
    lp, ln = np.meshgrid(grid, grid)
    out = util_odds(lp, ln)
    assert out.shape == lp.shape and np.isfinite(out).all()
    assert out.tolist() == [
        [float(util_odds(a, b)) for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(lp, ln, strict=True)
    ]


def test_util_odds_tiny_probability_is_log_pu():
    # P_u ≈ 2e^-1000: 1 − P_u = 1, UtilOdds = log P_u exactly in floating point
    assert float(util_odds(1e3, 1e3)) == pytest.approx(-1e3 + math.log(2), abs=1e-9)


def test_pref_odds_is_loss_difference():
    assert pref_odds([1.0, 5.0], [3.0, 2.0]).tolist() == [2.0, -3.0]


def test_encode_applies_the_token_rule(smol):
    _, tok = smol
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi?"}], tokenize=False, add_generation_prompt=True)
    e = encode(tok, prompt, "Yes")
    want = tok(prompt, add_special_tokens=False)["input_ids"] + tok("Yes", add_special_tokens=False)["input_ids"]
    assert list(e.ids) == want
    assert e.n_prompt == len(tok(prompt, add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match="tokenises to nothing"):
        encode(tok, prompt, "")


def test_pair_logprobs_match_plain_transformers_on_the_embedded_model(smol):
    from steer.core.metrics import encode_pair, pair_logprobs

    model, tok = smol
    prompts = ["Is the sky blue?", "Write a long and detailed review of a film you liked very much."]
    answers = ("Yes", "No, it is not, and here is why.")
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    with torch.no_grad():
        got = pair_logprobs(model, [encode_pair(tok, text, *answers) for text in texts]).tolist()
    want = [
        [reference_logprob(model, list(e.ids), e.n_prompt) for e in (encode(tok, text, a) for a in answers)]
        for text in texts
    ]
    assert np.asarray(got) == pytest.approx(np.asarray(want), abs=1e-3)


def test_pair_logprobs_is_differentiable():
    from steer.core.metrics import EncodedPair, pair_logprobs

    model = tiny_model("llama")
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(True)
    lp = pair_logprobs(model, [EncodedPair((5, 6), (7, 8), (9,))])
    lp.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_packed_pairs_equal_two_separate_passes(arch):
    """Gemma-2's tiny config has a sliding window of 4, so the packed sliding mask is exercised."""
    from steer.core.metrics import Encoded, EncodedPair, pair_logprobs

    model = tiny_model(arch)
    rng = np.random.default_rng(3)
    tokens = lambda n: tuple(int(x) for x in rng.integers(3, 120, n))  # noqa: E731
    batch = [EncodedPair(tokens(p), tokens(a), tokens(b)) for p, a, b in [(5, 3, 4), (9, 1, 6), (3, 7, 2)]]
    with torch.no_grad():
        got = pair_logprobs(model, batch)
        got_per_token = pair_logprobs(model, batch, per_token=True)
    for row, e in enumerate(batch):
        for col, answer in enumerate((e.positive, e.negative)):
            want = reference_logprob(model, list(e.prompt + answer), len(e.prompt))
            assert got[row, col].item() == pytest.approx(want, abs=1e-4)
            assert got_per_token[row, col].item() == pytest.approx(want / len(answer), abs=1e-4)
    assert Encoded((1, 2, 3), 1).n_answer == 2
