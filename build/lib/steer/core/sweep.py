"""The m-sweep engine: pairs × intervention × grid of multipliers → answer losses and log-odds.

One entry point, ``sweep``. Pairs are length-sorted into batches so padding stays small, each
prompt runs once for both of its answers, the layers before the steered one run once per batch
rather than once per m, only answer positions reach the output head, and the model runs in eval
mode under ``torch.inference_mode`` so the losses are deterministic.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from steer import rundir
from steer.core.batching import length_batches
from steer.core.interventions import DynamicAffine
from steer.core.metrics import EncodedPair, encode_pair, pair_logprobs, pref_odds, util_odds
from steer.core.models import model_fingerprint
from steer.core.prefix import capture_layer_input, reuse_prefix
from steer.io.resumable import run_resumable
from steer.pairs import PairRecord

log = logging.getLogger("steer")

COLUMNS = list(rundir.SWEEP_COLUMNS)


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
    parts_dir: Path | None = None,
    key: str = "",
) -> np.ndarray:
    """Losses [len(grid), len(pairs), 2] (A_p, A_n) with the intervention at every m of ``grid``.

    Both answers of a pair share one packed forward (``pair_logprobs``). Per batch, the first m
    runs the whole model and records the input of the steered layer; the other m reuse it and run
    only layers l..L (``steer.core.prefix``). With ``parts_dir``, every batch's losses are kept there as
    they finish (``steer.io.resumable``, under ``key`` and a digest of everything the losses depend
    on), and a re-run computes only the batches a killed run did not finish.
    """
    losses = np.empty((len(grid), len(pairs), 2), dtype=np.float64)
    batches = length_batches(pairs, batch_size)
    bar = tqdm(total=len(batches), desc="sweep", unit="batch", disable=not progress)
    with torch.inference_mode(), intervention.attached(model):
        if parts_dir is None:
            for batch in batches:
                losses[:, batch] = _batch_losses(model, [pairs[i] for i in batch], intervention, grid, per_token)
                bar.update()
        else:

            def compute(chunk: list[list[int]]) -> pd.DataFrame:
                (batch,) = chunk
                at = _batch_losses(model, [pairs[i] for i in batch], intervention, grid, per_token)
                return pd.DataFrame(
                    {
                        "pair": np.tile(batch, len(grid)),
                        "k": np.repeat(np.arange(len(grid)), len(batch)),
                        "loss_pos": at[:, :, 0].reshape(-1),
                        "loss_neg": at[:, :, 1].reshape(-1),
                    }
                )

            full_key = sweep_key(key, model, pairs, intervention, grid, batch_size, per_token)
            done = run_resumable(batches, 1, compute, parts_dir, full_key, progress=bar.update)
            log.info(
                "sweep: computed %d of %d batches, %d resumed from %s",
                done.computed,
                done.chunks,
                done.reused,
                parts_dir,
            )
            parts = done.frame
            losses[parts["k"].to_numpy(), parts["pair"].to_numpy()] = parts[["loss_pos", "loss_neg"]].to_numpy()
    bar.close()
    return losses


def _batch_losses(
    model: nn.Module, rows: Sequence[EncodedPair], intervention: DynamicAffine, grid: Sequence[float], per_token: bool
) -> np.ndarray:
    """[len(grid), len(rows), 2] losses of one batch, the intervention attached."""
    layer = intervention.info.layer
    out = np.empty((len(grid), len(rows), 2), dtype=np.float64)
    for k, m in enumerate(grid):
        intervention.set_multiplier(float(m))
        if k == 0:
            with capture_layer_input(model, layer) as prefix:
                lp = pair_logprobs(model, rows, per_token=per_token)
        else:
            with reuse_prefix(model, layer, prefix.value):
                lp = pair_logprobs(model, rows, per_token=per_token)
        out[k] = -lp.double().cpu().numpy()
    return out


def sweep_key(
    key: str,
    model: nn.Module,
    pairs: Sequence[EncodedPair],
    intervention: DynamicAffine,
    grid: Sequence[float],
    batch_size: int,
    per_token: bool,
) -> str:
    """A digest of everything a sweep's losses depend on, so kept parts are reused only by the
    same computation: the caller's ``key``, the model, the tokenised pairs, Δ, the grid and the
    batching (batch composition changes padding, hence the last bits of a loss)."""
    digest = hashlib.sha256(f"{key}|{model_fingerprint(model)}|{batch_size}|{per_token}|".encode())
    digest.update(repr([float(m) for m in grid]).encode())
    digest.update(repr([(p.prompt, p.positive, p.negative) for p in pairs]).encode())
    digest.update(intervention.digest().encode())
    return digest.hexdigest()


def sweep(
    model: nn.Module,
    tokenizer,
    records: Sequence[PairRecord],
    intervention: DynamicAffine,
    grid: Sequence[float],
    batch_size: int = 16,
    per_token: bool = False,
    progress: bool = True,
    parts_dir: Path | None = None,
    key: str = "",
) -> pd.DataFrame:
    """Score A_p and A_n of every record at every multiplier of ``grid``.

    Returns one row per (m, record) with the columns of ``sweep.parquet``. With ``parts_dir`` the
    sweep is resumable (``grid_losses``); the caller deletes the parts (``steer.io.resumable.finish``)
    once it has written the result.
    """
    if not records:
        raise ValueError("sweep: no pairs to score")
    grid = check_grid(grid)
    encoded = [encode_pair(tokenizer, r.prompt_text, r.positive, r.negative) for r in records]
    model.eval()
    losses = grid_losses(model, encoded, intervention, grid, batch_size, per_token, progress, parts_dir, key)
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


def by_record(frame: pd.DataFrame, n_records: int) -> list[pd.DataFrame]:
    """The rows of each record of a ``sweep`` frame, record by record (a process's share of a
    data-parallel sweep, ready for ``RunContext.gather``). ``sweep`` orders its rows m-major: row
    k·n + j is record j at the k-th multiplier."""
    if n_records < 1 or len(frame) % n_records:
        raise ValueError(f"by_record: {len(frame)} rows do not split into {n_records} records")
    return [frame.iloc[j::n_records] for j in range(n_records)]


def from_records(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Undo ``by_record``: one m-major frame, as ``sweep`` over all the records would order it."""
    n, width = len(parts), len(parts[0])
    whole = pd.concat(parts, ignore_index=True)  # record-major: record j's rows are j·G .. j·G + G − 1
    order = np.arange(n * width).reshape(n, width).T.reshape(-1)
    return whole.iloc[order].reset_index(drop=True)


def check_grid(grid: Sequence[float], key: str = "sweep.grid") -> list[float]:
    """The multipliers as floats, or a ValueError naming ``key``: a grid must be a non-empty list
    of distinct finite numbers (a NaN or infinite m would sweep for minutes and write NaN odds)."""
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence):
        raise ValueError(f"{key}={grid!r} must be a list of finite numbers, e.g. {key}=[-4,0,4]")
    if not len(grid):
        raise ValueError(f"{key} is empty: give the multipliers to score, e.g. {key}=[-4,0,4]")
    values = []
    for m in grid:
        if isinstance(m, bool) or not isinstance(m, (int, float, np.integer, np.floating)):
            raise ValueError(f"{key}: {m!r} is not a number; the grid takes finite numbers, e.g. [-4,-2,0,2,4]")
        if not np.isfinite(m):
            raise ValueError(f"{key}: {m!r} is not finite; the grid takes finite numbers, e.g. [-4,-2,0,2,4]")
        if float(m) in values:
            raise ValueError(f"{key}: {m!r} appears twice; each multiplier is scored once")
        values.append(float(m))
    return values


# A non-finite loss always makes PrefOdds (L_n − L_p) non-finite, so the odds flag every bad row.
ODDS = ["pref_odds", "util_odds"]


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean PrefOdds / UtilOdds per split and m over the finite rows, and ``nonfinite[split]``: how
    many rows at that m had NaN or infinite odds (a non-finite loss makes them so). Those rows are
    left out of the means and warned about: a mean never silently averages them away."""
    bad = pd.Series(~np.isfinite(frame[ODDS].to_numpy(dtype=np.float64)).all(axis=1), index=frame.index)
    keys = [frame["split"], frame["m"]]
    means = frame.loc[~bad].groupby(["split", "m"])[ODDS].mean()
    counts = bad.groupby(keys).sum().astype(int).rename("nonfinite")
    table = means.reindex(counts.index).join(counts).unstack("split")
    table.columns = [f"{metric}[{split}]" for metric, split in table.columns]
    if bad.any():
        where = ", ".join(f"{n} at m={m:g} ({split})" for (split, m), n in counts[counts > 0].items())
        log.warning(
            "sweep: %d of %d rows have a non-finite loss or odds, left out of the means: %s", bad.sum(), len(bad), where
        )
    return table
