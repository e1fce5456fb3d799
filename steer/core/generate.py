"""Batched, KV-cached generation, bare or steered at several multipliers in one pass.

Prompts are full prompt texts (the rendered chat template), tokenised with the token rule's
``add_special_tokens=False``. Every (prompt, m) combination is one row of a batch: the
intervention is attached once with one multiplier per row, so scoring k candidate multipliers
costs one pass over the prompts, not k. Batches group rows of similar length and are padded on
the left so every row's next token sits in the last column; the attention mask comes from the
lengths, never from ``ids != pad_id`` (SmolLM2's pad token also ends every chat turn), and the
position ids count only real tokens. Rows that reach a stop token leave the batch (their KV
cache rows are dropped), so a batch costs what its longest answer costs, not B times that.

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
from steer.core.interventions import DynamicAffine
from steer.core.models import model_fingerprint
from steer.io.resumable import run_resumable

log = logging.getLogger("steer")


@dataclass(frozen=True)
class Generation:
    """One answer: ``prompts[prompt_index]`` continued under multiplier ``m``.

    ``token_ids`` are the new tokens up to (not including) the first stop token; ``text`` is their
    decoding without special tokens; ``stopped_by_eos`` is False when the row hit ``max_new_tokens``.
    """

    prompt_index: int
    m: float
    text: str
    token_ids: tuple[int, ...]
    stopped_by_eos: bool

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class _Row:
    prompt_index: int
    m: float
    ids: tuple[int, ...]
    generator: torch.Generator | None

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


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists to a rectangle; the mask marks each row's last ``len(row)`` columns."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def row_seed(seed: int, prompt: str, m: float) -> int:
    """A 63-bit generator seed from (seed, prompt text, m): the same row draws the same numbers
    wherever it sits. ``m + 0.0`` makes -0.0 and 0.0 one multiplier."""
    digest = hashlib.sha256(f"{int(seed)}\0{float(m) + 0.0!r}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def top_p_keep(probs: torch.Tensor, top_p: float, k: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Nucleus filter of [B, V] probabilities: (the largest probabilities in descending order with
    the tokens outside the nucleus set to 0, their token ids). The nucleus is the shortest prefix
    whose mass reaches ``top_p``; a token stays when the mass strictly before it is below ``top_p``.
    Only the top ``k`` are ranked (a full sort of the vocabulary costs more than a small model's
    step), and ``k`` grows until every row's nucleus fits."""
    k = min(k, probs.shape[-1])
    top, order = probs.topk(k, dim=-1)
    while k < probs.shape[-1] and bool((top.sum(-1) < top_p).any()):
        k = min(8 * k, probs.shape[-1])
        top, order = probs.topk(k, dim=-1)
    before = top.cumsum(-1) - top
    return top.masked_fill(before >= top_p, 0.0), order


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """[B] tokens drawn from softmax(logits / temperature) restricted to the top-p nucleus, by
    inverse CDF: row b takes the first token whose cumulative mass exceeds ``uniforms[b]`` times
    the row's kept mass. Deterministic given the uniforms."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs, order = top_p_keep(probs, top_p)
    else:
        order = None
    cdf = probs.cumsum(-1)
    target = (uniforms.to(cdf.device, cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    index = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
    return index.squeeze(-1) if order is None else order.gather(-1, index).squeeze(-1)


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


def _multipliers(multipliers: Sequence[float] | float, intervention: DynamicAffine | None) -> list[float]:
    values = [multipliers] if isinstance(multipliers, int | float) else list(multipliers)
    if not values:
        raise ValueError("multipliers is empty: give at least one m")
    values = [float(m) for m in values]
    if not all(math.isfinite(m) for m in values):
        raise ValueError(f"multipliers must be finite numbers, got {values}")
    if intervention is None and any(m != 0.0 for m in values):
        raise ValueError(f"multipliers {values} need an intervention; without one only m = 0 (the bare model) exists")
    return values


def _continue(model: nn.Module, rows: Sequence[_Row], intervention, stops, pad_id, max_new_tokens, pick):
    """Generate for one batch of rows: [(new token ids, stopped by EOS)] in the order of ``rows``.

    Prefill of the left-padded prompts, then one token per step from the KV cache. A row that
    emits a stop token is removed from the batch: its cache rows, mask row and multiplier go.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = left_pad([r.ids for r in rows], pad_id, device)
    m = torch.tensor([r.m for r in rows], dtype=torch.float32, device=device)
    if intervention is not None:
        intervention.set_multiplier(m)
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
    )
    active = list(range(len(rows)))
    answers: list[list[int]] = [[] for _ in rows]
    stopped = [False] * len(rows)
    for step in range(max_new_tokens):
        tokens = pick(out.logits[:, -1], [rows[i] for i in active])
        keep = []
        for j, (i, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
            if token in stops:
                stopped[i] = True
            else:
                answers[i].append(token)
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, tokens, m = mask[index], tokens[index], m[index]
            if intervention is not None:
                intervention.set_multiplier(m)
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=-1)
        positions = mask.sum(-1, keepdim=True) - 1
        out = model(
            input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        )
    return list(zip(answers, stopped, strict=True))


def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    intervention: DynamicAffine | None = None,
    multipliers: Sequence[float] | float = 0.0,
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
    Eval mode and ``torch.inference_mode`` inside; the model's training flag is restored.

    With ``parts_dir``, the prompts go in chunks of one batch (``batch_size`` // number of m
    prompts) whose answers are kept there as they finish (``steer.io.resumable``, under ``key`` and a
    digest of everything the answers depend on): a re-run after a kill generates only the chunks
    that were not finished, and returns what an uninterrupted run does.
    """
    _check(max_new_tokens, batch_size, do_sample, temperature, top_p)
    ms = _multipliers(multipliers, intervention)
    options = {
        "intervention": intervention, "multipliers": ms, "max_new_tokens": max_new_tokens,
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
        Generation(int(r.prompt_index), float(r.m), str(r.text), tuple(map(int, r.token_ids)), bool(r.stopped_by_eos))
        for r in rows
    ]


def generation_key(key: str, model: nn.Module, prompts: Sequence[str], options: dict) -> str:
    """A digest of everything the answers depend on, so kept parts are reused only by the same
    generation: the caller's ``key``, the model, the prompts, Δ, the multipliers and the settings
    (the chunking too: a batch's composition decides greedy ties of the padding)."""
    intervention = options["intervention"]
    settings = {k: v for k, v in options.items() if k != "intervention"}
    digest = hashlib.sha256(f"{key}|{model_fingerprint(model)}|{json.dumps(settings, sort_keys=True)}|".encode())
    digest.update((intervention.digest() if intervention is not None else "bare").encode())
    digest.update(json.dumps(list(prompts)).encode())
    return digest.hexdigest()


def _generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    intervention: DynamicAffine | None,
    multipliers: list[float],
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    seed: int,
    progress: bool,
) -> list[Generation]:
    """``generate`` of checked arguments, every prompt in one call."""
    ms = multipliers
    encoded = [tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {empty[0]} tokenises to nothing: nothing to continue")
    stops = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]

    def generator(p: int, m: float) -> torch.Generator | None:
        return torch.Generator().manual_seed(row_seed(seed, prompts[p], m)) if do_sample else None

    def pick(logits: torch.Tensor, batch: Sequence[_Row]) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        uniforms = torch.stack([torch.rand((), generator=r.generator) for r in batch])
        return sample_tokens(logits, uniforms, temperature, top_p)

    rows = [_Row(p, m, ids, generator(p, m)) for p, ids in enumerate(encoded) for m in ms]
    results: list[Generation | None] = [None] * len(rows)
    was_training = model.training
    saved = None if intervention is None else (intervention.multiplier, intervention.bias_multiplier)
    if intervention is not None:
        intervention.attach(model)
    model.eval()
    try:
        with torch.inference_mode():
            batches = length_batches(rows, batch_size)
            for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress):
                done = _continue(model, [rows[i] for i in batch], intervention, stops, pad_id, max_new_tokens, pick)
                for i, (new, eos) in zip(batch, done, strict=True):
                    text = tokenizer.decode(new, skip_special_tokens=True)
                    results[i] = Generation(rows[i].prompt_index, rows[i].m, text, tuple(new), eos)
    finally:
        model.train(was_training)
        if intervention is not None:
            intervention.detach()
            intervention.set_multiplier(*saved)
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
