"""DiffMean: a steering vector with no training, the difference of mean activations.

Δb = mean of the residual stream at the output of layer l over the answer tokens of A_p, minus
the same over A_n (all answer tokens of a split pooled). With m = 1 the vector moves the mean
negative-answer activation onto the mean positive one, so m is in natural units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from steer.core.batching import length_batches
from steer.core.metrics import Encoded, collate, encode
from steer.core.models import decoder_layer
from steer.pairs import PairRecord


def mean_answer_activation(
    model: nn.Module, encoded: Sequence[Encoded], layer: int, batch_size: int = 16, progress: bool = False
) -> torch.Tensor:
    """Mean output of decoder layer ``layer`` over every answer-token position of ``encoded``."""
    captured: list[torch.Tensor] = []

    def grab(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    device = next(model.parameters()).device
    total, count = None, 0
    handle = decoder_layer(model, layer).register_forward_hook(grab)
    try:
        with torch.inference_mode():
            for batch in tqdm(length_batches(encoded, batch_size), desc="diffmean", disable=not progress):
                rows = [encoded[i] for i in batch]
                ids, mask = collate(rows, device)
                model.get_decoder()(input_ids=ids, attention_mask=mask)
                hidden = captured.pop().double()
                for row, e in enumerate(rows):
                    part = hidden[row, e.n_prompt : len(e.ids)].sum(0)
                    total = part if total is None else total + part
                    count += e.n_answer
    finally:
        handle.remove()
    return (total / count).float().cpu()


def diffmean_vector(
    model: nn.Module, tokenizer, records: Sequence[PairRecord], layer: int, batch_size: int = 16, progress: bool = True
) -> torch.Tensor:
    """Δb = mean activation over A_p answer tokens − mean over A_n answer tokens at layer l."""
    if not records:
        raise ValueError("diffmean: no training pairs")
    pos = [encode(tokenizer, r.prompt_text, r.positive) for r in records]
    neg = [encode(tokenizer, r.prompt_text, r.negative) for r in records]
    return mean_answer_activation(model, pos, layer, batch_size, progress) - mean_answer_activation(
        model, neg, layer, batch_size, progress
    )
