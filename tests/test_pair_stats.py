"""What data-check reports: unsteered losses against plain transformers, and their summaries."""

from __future__ import annotations

import numpy as np
import pytest

from steer.core.metrics import encode, pref_odds, util_odds
from steer.datacheck.stats import answer_lengths, mass_summary, unsteered_scores
from steer.pairs import PairRecord, render_prompt
from tests.conftest import reference_logprob


def test_unsteered_scores_match_plain_transformers(smol):
    model, tok = smol
    records = [
        PairRecord("train", "0", render_prompt(tok, "Is the sky blue?"), "Yes", "No"),
        PairRecord("train", "1", render_prompt(tok, "Review a film you saw."), "A joy from start to end.", "Dull."),
        PairRecord("test", "2", render_prompt(tok, "Do you like rain?"), "Yes, very much.", "No"),
    ]
    scores = unsteered_scores(model, tok, records, batch_size=2)

    def loss(record, answer):
        e = encode(tok, record.prompt_text, answer)
        return -reference_logprob(model, list(e.ids), e.n_prompt)

    want_pos = np.array([loss(r, r.positive) for r in records])
    want_neg = np.array([loss(r, r.negative) for r in records])
    assert scores["split"].tolist() == ["train", "train", "test"]
    assert scores["loss_pos"].to_numpy() == pytest.approx(want_pos, abs=1e-3)
    assert scores["loss_neg"].to_numpy() == pytest.approx(want_neg, abs=1e-3)
    assert scores["p_sum"].to_numpy() == pytest.approx(np.exp(-want_pos) + np.exp(-want_neg), rel=1e-3)
    assert scores["pref_odds"].to_numpy() == pytest.approx(pref_odds(want_pos, want_neg), abs=2e-3)
    assert scores["util_odds"].to_numpy() == pytest.approx(util_odds(want_pos, want_neg), abs=2e-3)

    summary = mass_summary(scores)
    assert summary.loc["train", "pairs"] == 2 and summary.loc["test", "pairs"] == 1
    assert summary.loc["train", "mean_p_sum"] == pytest.approx(scores["p_sum"][:2].mean())
    assert summary.loc["test", "prefers_pos"] == float(want_pos[2] < want_neg[2])

    lengths = answer_lengths(tok, records)
    counts = [encode(tok, r.prompt_text, r.positive).n_answer for r in records]
    assert lengths.loc["positive", "max"] == max(counts) and lengths.loc["positive", "pairs"] == 3
