"""The m-sweep engine: pairs × intervention × grid of multipliers → answer losses and log-odds.

One entry point, ``sweep``. Pairs are length-sorted into batches so padding stays small, each
prompt runs once for both of its answers, the layers before the steered one run once per batch
rather than once per m, only answer positions reach the output head, and the model runs in eval
mode under ``torch.inference_mode`` so the losses are deterministic.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence, Sized

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from steer.data import PairRecord
from steer.interventions import DynamicAffine
from steer.metrics import EncodedPair, encode_pair, pair_logprobs, pref_odds, util_odds
from steer.prefix import capture_layer_input, reuse_prefix

COLUMNS = ["split", "example_id", "m", "loss_pos", "loss_neg", "pref_odds", "util_odds"]


def length_batches(items: Sequence[Sized], batch_size: int) -> list[list[int]]:
    """Indices of ``items`` grouped into batches of similar length (``len(item)`` tokens)."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pair_losses(
    model: nn.Module, pairs: Sequence[EncodedPair], batch_size: int = 16, per_token: bool = False
) -> np.ndarray:
    """[len(pairs), 2] losses (A_p, A_n) with the model as it is now (hooks included), packed as
    the sweep packs them."""
    losses = np.empty((len(pairs), 2), dtype=np.float64)
    with torch.inference_mode():
        for batch in length_batches(pairs, batch_size):
            lp = pair_logprobs(model, [pairs[i] for i in batch], per_token=per_token)
            losses[batch] = -lp.double().cpu().numpy()
    return losses


def grid_losses(
    model: nn.Module,
    pairs: Sequence[EncodedPair],
    intervention: DynamicAffine,
    grid: Sequence[float],
    batch_size: int = 16,
    per_token: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """Losses [len(grid), len(pairs), 2] (A_p, A_n) with the intervention at every m of ``grid``.

    Both answers of a pair share one packed forward (``pair_logprobs``). Per batch, the first m
    runs the whole model and records the input of the steered layer; the other m reuse it and run
    only layers l..L (``steer.prefix``).
    """
    layer = intervention.info.layer
    losses = np.empty((len(grid), len(pairs), 2), dtype=np.float64)
    batches = length_batches(pairs, batch_size)
    bar = tqdm(total=len(batches) * len(grid), desc="sweep", unit="pass", disable=not progress)
    with torch.inference_mode(), intervention.attached(model):
        for batch in batches:
            rows = [pairs[i] for i in batch]
            for k, m in enumerate(grid):
                intervention.set_multiplier(float(m))
                if k == 0:
                    with capture_layer_input(model, layer) as prefix:
                        lp = pair_logprobs(model, rows, per_token=per_token)
                else:
                    with reuse_prefix(model, layer, prefix.value):
                        lp = pair_logprobs(model, rows, per_token=per_token)
                losses[k, batch] = -lp.double().cpu().numpy()
                bar.update()
    bar.close()
    return losses


def check_grid(grid: Sequence[float] | None) -> None:
    """A grid of multipliers: not empty, numbers only."""
    if grid is None or len(grid) == 0:
        raise ValueError("sweep.grid is empty: give the multipliers to score, e.g. sweep.grid=[-4,0,4]")
    bad = [m for m in grid if not isinstance(m, numbers.Real) or isinstance(m, bool)]
    if bad:
        raise ValueError(f"sweep.grid: {bad[0]!r} is not a number")


def sweep(
    model: nn.Module,
    tokenizer,
    records: Sequence[PairRecord],
    intervention: DynamicAffine,
    grid: Sequence[float],
    batch_size: int = 16,
    per_token: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Score A_p and A_n of every record at every multiplier of ``grid``.

    Returns one row per (m, record) with the columns of ``sweep.parquet``.
    """
    if not records:
        raise ValueError("sweep: no pairs to score")
    check_grid(grid)
    encoded = [encode_pair(tokenizer, r.prompt_text, r.positive, r.negative) for r in records]
    model.eval()
    losses = grid_losses(model, encoded, intervention, grid, batch_size, per_token, progress)
    frames = []
    for k, m in enumerate(grid):
        at_m = losses[k]
        frames.append(
            pd.DataFrame(
                {
                    "split": [r.split for r in records],
                    "example_id": [r.example_id for r in records],
                    "m": float(m),
                    "loss_pos": at_m[:, 0],
                    "loss_neg": at_m[:, 1],
                    "pref_odds": pref_odds(at_m[:, 0], at_m[:, 1]),
                    "util_odds": util_odds(at_m[:, 0], at_m[:, 1]),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean PrefOdds / UtilOdds per split and m: the table a run prints at the end."""
    table = frame.groupby(["split", "m"])[["pref_odds", "util_odds"]].mean().unstack("split")
    table.columns = [f"{metric}[{split}]" for metric, split in table.columns]
    return table
