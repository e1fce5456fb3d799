"""Batched, KV-cached generation, bare or steered at several multipliers in one pass.

Prompts are full prompt texts (the rendered chat template), tokenised with the token rule's
``add_special_tokens=False``. Every (prompt, m) combination is one row of a batch: the
intervention is attached once with one multiplier per row, so scoring k candidate multipliers
costs one pass over the prompts, not k. Batches group rows of similar length and are padded on
the left so every row's next token sits in the last column; the attention mask comes from the
lengths, never from ``ids != pad_id`` (SmolLM2's pad token also ends every chat turn), and the
position ids count only real tokens. Rows that reach a stop token leave the batch (their KV
cache rows are dropped), so a batch costs what its longest answer costs, not B times that. The
decoding itself is ``steer.core.decode.DecodeBatch``'s, the batch ``steer.serve`` decodes through
too. Several interventions compose: a row then carries one m per intervention.

Greedy by default. Sampling draws one uniform number per row and step from the row's own
generator, seeded from (seed, prompt text, m), and picks the token by inverse CDF: a row's
answer depends on nothing else in the batch, so it is the same at any batch size or in any
prompt list. Hooks already on the model stay on.

Several processes (``accelerate launch``; the judge's steered generation): shard the prompts, not
the rows, so each prompt's answers at every m come from one process, then put them back together:

    groups = ctx.map_sharded(prompts, lambda part: by_prompt(generate(model, tok, part, ...), len(part)))
    found = from_prompts(groups)  # main process: what generate(model, tok, prompts, ...) returns

Process r continues prompts r, r + N, ... (``RunContext.shard``); since a row's answer depends on
nothing else in its batch, the texts equal one process's (greedy up to float ties of the padding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from steer.core.batching import length_batches
from steer.core.decode import DecodeBatch
from steer.core.interventions import (
    DynamicAffine,
    RowInterventions,
    Steering,
    multiplier_limit,
    representable,
    steering,
)
from steer.core.models import model_fingerprint
from steer.io.resumable import run_resumable

log = logging.getLogger("steer")


Multiplier = float | tuple[float, ...]  # one m, or one per intervention when several compose


@dataclass(frozen=True)
class Generation:
    """One answer: ``prompts[prompt_index]`` continued under multiplier ``m`` (a tuple, one m per
    intervention, when several interventions compose).

    ``token_ids`` are the new tokens up to (not including) the first stop token; ``text`` is their
    decoding without special tokens; ``stopped_by_eos`` is False when the row hit ``max_new_tokens``.
    """

    prompt_index: int
    m: Multiplier
    text: str
    token_ids: tuple[int, ...]
    stopped_by_eos: bool

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class _Row:
    """A (prompt, m) row of ``steer.core.decode.DecodeBatch``."""

    prompt_index: int
    m: Multiplier
    ids: tuple[int, ...]
    steer: Steering
    generator: torch.Generator | None
    temperature: float
    top_p: float

    def __len__(self) -> int:
        return len(self.ids)


def stop_ids(model: nn.Module, tokenizer) -> list[int]:
    """Token ids that end an answer: the generation config's EOS ids and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("generate: neither the model's generation config nor the tokenizer names an EOS token")
    return sorted(set(ids))


def row_seed(seed: int, prompt: str, m: Multiplier) -> int:
    """A 63-bit generator seed from (seed, prompt text, m): the same row draws the same numbers
    wherever it sits. ``m + 0.0`` makes -0.0 and 0.0 one multiplier; a composed m (one per run,
    in the runs' order) is its tuple."""
    key = repr(tuple(float(x) + 0.0 for x in m)) if isinstance(m, tuple) else repr(float(m) + 0.0)
    digest = hashlib.sha256(f"{int(seed)}\0{key}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _check(max_new_tokens: int, batch_size: int, do_sample: bool, temperature: float, top_p: float) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if do_sample and not (temperature > 0.0 and math.isfinite(temperature)):
        raise ValueError(
            f"temperature must be a positive finite number when sampling (do_sample=True), got {temperature!r}"
        )


def _interventions(intervention: DynamicAffine | Sequence[DynamicAffine] | None) -> list[DynamicAffine]:
    """The interventions of ``generate``'s argument; one given twice is refused (it cannot compose
    with itself)."""
    ivs = (
        []
        if intervention is None
        else [intervention]
        if isinstance(intervention, DynamicAffine)
        else list(intervention)
    )
    if len({id(iv) for iv in ivs}) != len(ivs):
        raise ValueError("an intervention is given twice: a run cannot be composed with itself")
    return ivs


def _multipliers(multipliers, ivs: list[DynamicAffine], dtype: torch.dtype) -> list[Multiplier]:
    """The checked multipliers (one m, or a list of them): floats for one (or no) intervention,
    sequences of one m per intervention for several; within ``multiplier_limit`` of the dtype."""
    values = [multipliers] if isinstance(multipliers, int | float) else list(multipliers)
    if not values:
        raise ValueError("multipliers is empty: give at least one m")
    if len(ivs) > 1:
        bad = [m for m in values if not (isinstance(m, Sequence) and len(m) == len(ivs))]
        if bad:
            raise ValueError(f"multipliers {bad} need one m per intervention ({len(ivs)} compose)")
        values = [tuple(float(x) for x in m) for m in values]
    else:
        values = [float(m) for m in values]
    flat = [x for m in values for x in (m if isinstance(m, tuple) else (m,))]
    if not all(math.isfinite(m) for m in flat):
        raise ValueError(f"multipliers must be finite numbers, got {values}")
    if not ivs and any(m != 0.0 for m in flat):
        raise ValueError(f"multipliers {values} need an intervention; without one only m = 0 (the bare model) exists")
    limits = [multiplier_limit(iv, dtype) for iv in ivs]
    over = [m for m in values if ivs and not representable(m if isinstance(m, tuple) else (m,), limits)]
    if over:
        named = [
            f"|m| <= {limit:.3g} for {iv.form} at layer {iv.info.layer}" for iv, limit in zip(ivs, limits, strict=True)
        ]
        composed = "; composed, the sum of |m| / limit must stay <= 1" if len(ivs) > 1 else ""
        raise ValueError(
            f"multipliers {over} are too large: the steered activations must stay representable in {dtype} "
            f"({', '.join(named)}{composed})"
        )
    return values


def _steering(m: Multiplier) -> Steering:
    return steering(enumerate(m if isinstance(m, tuple) else (m,)))


def seed_multiplier(steer: Steering) -> Multiplier:
    """The m a row's sampling is seeded from: 0 for the bare model, the one m of a single run,
    the tuple of m (in the runs' order) of a composition; runs at m = 0 do not count, so they
    change no sample."""
    return 0.0 if not steer else steer[0][1] if len(steer) == 1 else tuple(m for _, m in steer)


def _check_finite(batch: DecodeBatch) -> None:
    bad = [row.m for row, ok in zip(batch.rows, batch.finite(), strict=True) if not ok]
    if bad:
        batch.keep([])
        raise ValueError(f"the steered logits at m={bad[0]} are not finite: m is too large for the model's dtype")


def _continue(batch: DecodeBatch, rows: Sequence[_Row], stops, max_new_tokens: int) -> list[tuple[list[int], bool]]:
    """Generate for one batch of rows: [(new token ids, stopped by EOS)] in the order of ``rows``.

    Prefill of the left-padded prompts, then one token per step from the KV cache. A row that
    emits a stop token leaves the batch (its cache rows and steering go).
    """
    batch.admit(list(rows))
    active = list(range(len(rows)))
    answers: list[list[int]] = [[] for _ in rows]
    stopped = [False] * len(rows)
    for step in range(max_new_tokens):
        _check_finite(batch)
        tokens = batch.pick()
        keep = []
        for j, (i, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
            if token in stops:
                stopped[i] = True
            else:
                answers[i].append(token)
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        batch.keep(keep)
        active = [active[j] for j in keep]
        batch.step(tokens[keep] if len(keep) < len(tokens) else tokens)
    batch.keep([])
    return list(zip(answers, stopped, strict=True))


def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    intervention: DynamicAffine | Sequence[DynamicAffine] | None = None,
    multipliers: Sequence[Multiplier] | Multiplier = 0.0,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    parts_dir: str | Path | None = None,
    key: str = "",
) -> list[Generation]:
    """Continue every prompt text under every multiplier: one ``Generation`` per (prompt, m), in
    prompt-major order (``prompts[0]`` at each m, then ``prompts[1]``, ...).

    ``intervention`` (not attached yet) is attached for the call with one m per batch row and
    detached after, its multiplier restored; m = 0 adds an exact zero, so those rows are the bare
    model's answers. ``batch_size`` counts rows, i.e. (prompt, m) pairs. Greedy unless
    ``do_sample``; sampling with ``temperature`` and nucleus ``top_p`` is seeded per row from
    (``seed``, prompt text, m), so identical prompts at the same m and seed get identical samples.
    Several interventions (a list) compose: each m is then a tuple with one multiplier per
    intervention, and a row gets Δh = Σ mᵢ·(ΔWᵢ·h + Δbᵢ) in one forward. Eval mode and
    ``torch.inference_mode`` inside; the model's training flag is restored.

    With ``parts_dir``, the prompts go in chunks of one batch (``batch_size`` // number of m
    prompts) whose answers are kept there as they finish (``steer.io.resumable``, under ``key`` and a
    digest of everything the answers depend on): a re-run after a kill generates only the chunks
    that were not finished, and returns what an uninterrupted run does.
    """
    _check(max_new_tokens, batch_size, do_sample, temperature, top_p)
    ivs = _interventions(intervention)
    ms = _multipliers(multipliers, ivs, next(model.parameters()).dtype)
    options = {
        "intervention": ivs, "multipliers": ms, "max_new_tokens": max_new_tokens,
        "batch_size": batch_size, "do_sample": do_sample, "temperature": temperature, "top_p": top_p, "seed": seed,
    }  # fmt: skip
    if parts_dir is None:
        return _generate(model, tokenizer, prompts, progress=progress, **options)
    return _resumable(model, tokenizer, prompts, options, progress, Path(parts_dir), key)


def _resumable(
    model, tokenizer, prompts: Sequence[str], options: dict, progress: bool, parts_dir: Path, key: str
) -> list[Generation]:
    """``generate`` in chunks of one batch, each kept in ``parts_dir`` once finished."""
    full_key = generation_key(key, model, prompts, options)
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress)

    def compute(chunk: list[int]) -> pd.DataFrame:
        found = _generate(model, tokenizer, [prompts[i] for i in chunk], progress=False, **options)
        return pd.DataFrame(
            {
                "prompt_index": [chunk[g.prompt_index] for g in found],
                "m": [g.m for g in found],
                "text": [g.text for g in found],
                "token_ids": [list(g.token_ids) for g in found],
                "stopped_by_eos": [g.stopped_by_eos for g in found],
            }
        )

    chunk = max(1, options["batch_size"] // len(options["multipliers"]))
    done = run_resumable(range(len(prompts)), chunk, compute, parts_dir, full_key, progress=bar.update)
    bar.close()
    log.info(
        "generate: computed %d of %d chunks, %d resumed from %s", done.computed, done.chunks, done.reused, parts_dir
    )
    rows = done.frame.itertuples(index=False)
    return [
        Generation(
            int(r.prompt_index), _multiplier(r.m), str(r.text), tuple(map(int, r.token_ids)), bool(r.stopped_by_eos)
        )
        for r in rows
    ]


def generation_key(key: str, model: nn.Module, prompts: Sequence[str], options: dict) -> str:
    """A digest of everything the answers depend on, so kept parts are reused only by the same
    generation: the caller's ``key``, the model, the prompts, Δ, the multipliers and the settings
    (the chunking too: a batch's composition decides greedy ties of the padding)."""
    ivs = options["intervention"]
    settings = {k: v for k, v in options.items() if k != "intervention"}
    digest = hashlib.sha256(f"{key}|{model_fingerprint(model)}|{json.dumps(settings, sort_keys=True)}|".encode())
    digest.update(("|".join(iv.digest() for iv in ivs) if ivs else "bare").encode())
    digest.update(json.dumps(list(prompts)).encode())
    return digest.hexdigest()


def _multiplier(value) -> Multiplier:
    """A multiplier read back from a kept part: a float, or a tuple where several composed."""
    return float(value) if isinstance(value, int | float) else tuple(float(x) for x in value)


def _generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    intervention: list[DynamicAffine],
    multipliers: list[Multiplier],
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    seed: int,
    progress: bool,
) -> list[Generation]:
    """``generate`` of checked arguments, every prompt in one call."""
    encoded = [tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {empty[0]} tokenises to nothing: nothing to continue")
    stops = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]

    def row(p: int, ids: tuple[int, ...], m: Multiplier) -> _Row:
        steer = _steering(m)
        generator = (
            torch.Generator().manual_seed(row_seed(seed, prompts[p], seed_multiplier(steer))) if do_sample else None
        )
        return _Row(p, m, ids, steer, generator, temperature, top_p)

    rows = [row(p, ids, m) for p, ids in enumerate(encoded) for m in multipliers]
    results: list[Generation | None] = [None] * len(rows)
    was_training = model.training
    saved = [(iv.multiplier, iv.bias_multiplier) for iv in intervention]
    runs = RowInterventions(intervention).attach(model)
    model.eval()
    try:
        with torch.inference_mode():
            decode = DecodeBatch(model, runs, pad_id)
            for batch in tqdm(length_batches(rows, batch_size), desc="generate", unit="batch", disable=not progress):
                done = _continue(decode, [rows[i] for i in batch], stops, max_new_tokens)
                for i, (new, eos) in zip(batch, done, strict=True):
                    text = tokenizer.decode(new, skip_special_tokens=True)
                    results[i] = Generation(rows[i].prompt_index, rows[i].m, text, tuple(new), eos)
    finally:
        model.train(was_training)
        runs.detach()
        for iv, m in zip(intervention, saved, strict=True):
            iv.set_multiplier(*m)
    return results


def greedy_generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    progress: bool = True,
) -> list[str]:
    """The greedy continuation of every prompt text with the model as it is (hooks included), cut
    at the first EOS, as decoded text in the order of ``prompts``."""
    found = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    return [g.text for g in found]


def by_prompt(found: Sequence[Generation], n_prompts: int) -> list[list[Generation]]:
    """``generate``'s answers grouped per prompt (each prompt's answers at every m): one result per
    prompt, the shape ``RunContext.map_sharded`` gathers."""
    if len(found) % max(n_prompts, 1) or (found and not n_prompts):
        raise ValueError(f"by_prompt: {len(found)} answers do not split into {n_prompts} prompts")
    per = len(found) // max(n_prompts, 1)
    return [list(found[i * per : (i + 1) * per]) for i in range(n_prompts)]


def from_prompts(groups: Sequence[Sequence[Generation]]) -> list[Generation]:
    """Undo ``by_prompt`` over gathered groups: one prompt-major list whose ``prompt_index`` counts
    positions in the whole prompt list (a process numbered its own share from 0)."""
    return [replace(g, prompt_index=i) for i, group in enumerate(groups) for g in group]
