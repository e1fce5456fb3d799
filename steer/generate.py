"""Batched greedy generation: the model's own answers (AxBench's A_n) and, later, steered answers.

Prompts are full prompt texts (the rendered chat template), tokenised with the token rule's
``add_special_tokens=False``. Batches group prompts of similar length and are padded on the left
so every row's next token sits in the last column; the attention mask comes from the lengths,
never from ``ids != pad_id`` (SmolLM2's pad token also ends every chat turn). Whatever hooks are
on the model stay on: attach an intervention first (``with iv.attached(model, multiplier=m):``)
to generate under steering.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from steer.sweep import length_batches


def stop_ids(model: nn.Module, tokenizer) -> list[int]:
    """Token ids that end an answer: the generation config's EOS ids and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("greedy_generate: neither the model's generation config nor the tokenizer names an EOS token")
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


def answer_ids(generated: Sequence[int], stops: Sequence[int]) -> list[int]:
    """The generated ids up to (not including) the first stop token."""
    out = []
    for token in generated:
        if token in stops:
            break
        out.append(token)
    return out


def greedy_generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    progress: bool = True,
) -> list[str]:
    """The greedy continuation of every prompt text, cut at the first EOS, as decoded text.

    Deterministic: no sampling, eval mode, ``torch.inference_mode``. Answers are returned in the
    order of ``prompts``.
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    encoded = [tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {empty[0]} tokenises to nothing: nothing to continue")
    stops = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id, num_beams=1
    )
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(length_batches(encoded, batch_size), desc="generate", unit="batch", disable=not progress):
                ids, mask = left_pad([encoded[i] for i in batch], pad_id, device)
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                for row, i in enumerate(batch):
                    new = answer_ids(out[row, ids.shape[1] :].tolist(), stops)
                    answers[i] = tokenizer.decode(new, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers
