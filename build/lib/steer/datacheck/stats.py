"""What a data set's pairs look like to the unsteered model: answer lengths and probability mass.

``answer_lengths`` counts answer tokens by the token rule. ``unsteered_scores`` scores A_p and A_n
of every record with the bare model (the same losses the sweep records at m = 0), and
``mass_summary`` reduces them to the numbers that say whether a utility curve will measure
steering or formatting: the mean of P(A_p|q) + P(A_n|q), the mean UtilOdds and PrefOdds, and the
share of pairs where the model already prefers A_p.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import nn

from steer.core.metrics import encode, encode_pair, pref_odds, util_odds
from steer.core.sweep import pair_losses
from steer.pairs import PairRecord


def answer_lengths(tokenizer, records: Sequence[PairRecord]) -> pd.DataFrame:
    """Token counts of A_p and A_n per side: count, mean, min, median, max."""
    rows = {}
    for side in ("positive", "negative"):
        n = np.array([encode(tokenizer, r.prompt_text, getattr(r, side)).n_answer for r in records])
        rows[side] = {"pairs": len(n), "mean": n.mean(), "min": n.min(), "median": np.median(n), "max": n.max()}
    return pd.DataFrame(rows).T


def unsteered_scores(model: nn.Module, tokenizer, records: Sequence[PairRecord], batch_size: int = 16) -> pd.DataFrame:
    """Per record: split, L_p, L_n, P(A_p|q) + P(A_n|q), PrefOdds and UtilOdds of the bare model."""
    if not records:
        raise ValueError("unsteered_scores: no pairs to score")
    pairs = [encode_pair(tokenizer, r.prompt_text, r.positive, r.negative) for r in records]
    model.eval()
    losses = pair_losses(model, pairs, batch_size)
    return pd.DataFrame(
        {
            "split": [r.split for r in records],
            "loss_pos": losses[:, 0],
            "loss_neg": losses[:, 1],
            "p_sum": np.exp(-losses[:, 0]) + np.exp(-losses[:, 1]),
            "pref_odds": pref_odds(losses[:, 0], losses[:, 1]),
            "util_odds": util_odds(losses[:, 0], losses[:, 1]),
        }
    )


def mass_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per split: mean and median P(A_p)+P(A_n), mean UtilOdds / PrefOdds, share preferring A_p."""
    grouped = scores.groupby("split", sort=False)
    return pd.DataFrame(
        {
            "pairs": grouped.size(),
            "mean_p_sum": grouped["p_sum"].mean(),
            "median_p_sum": grouped["p_sum"].median(),
            "mean_util_odds": grouped["util_odds"].mean(),
            "mean_pref_odds": grouped["pref_odds"].mean(),
            "prefers_pos": grouped["pref_odds"].apply(lambda x: float((x > 0).mean())),
        }
    )
