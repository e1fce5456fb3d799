"""Answer log-likelihoods under teacher forcing, and the paper's preference/utility log-odds.

Token rule (used everywhere: sweep, training, DiffMean, tests)::

    ids = tok(prompt_text, add_special_tokens=False) + tok(answer_text, add_special_tokens=False)

where ``prompt_text`` is the fully rendered chat template with the generation prompt. The loss of
an answer sums −log p(y_t | ids_<t) over the answer ids only. Prompt and answer are tokenised
separately so the boundary is exact and identical for A_p and A_n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from steer.core.head import answer_logprobs

# P_u = P(A_p) + P(A_n) can reach 1 (or pass it when one answer extends the other); the log-odds
# then saturate at log((1 − ε)/ε) instead of turning into inf or NaN.
UTIL_EPS = 1e-12


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + answer, and where the answer starts."""

    ids: tuple[int, ...]
    n_prompt: int

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.n_prompt

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer, prompt_text: str, answer_text: str) -> Encoded:
    """Apply the token rule. An empty answer is an error: its loss would be a silent zero."""
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    if not answer:
        raise ValueError(f"answer {answer_text!r} tokenises to nothing")
    if not prompt:
        raise ValueError("prompt_text tokenises to nothing: the first answer token has no context")
    return Encoded(tuple(prompt) + tuple(answer), len(prompt))


def collate(batch: Sequence[Encoded], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to a rectangle. The mask comes from lengths, never from ``ids != pad_id``
    (SmolLM2's pad token also ends every chat turn)."""
    width = max(len(e.ids) for e in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
    return ids.to(device), mask.to(device)


def pref_odds(loss_pos, loss_neg) -> np.ndarray:
    """PrefOdds = L_n − L_p = log P(A_p|q) − log P(A_n|q)."""
    return np.asarray(loss_neg, dtype=np.float64) - np.asarray(loss_pos, dtype=np.float64)


def util_odds(loss_pos, loss_neg) -> np.ndarray:
    """UtilOdds = log(P_u / (1 − P_u)), P_u = e^−L_p + e^−L_n, computed in log space.

    Finite for every finite loss: log P_u is capped at log(1 − UTIL_EPS), and log(1 − P_u) uses
    expm1 near P_u = 1 and log1p far from it.
    """
    lp = np.asarray(loss_pos, dtype=np.float64)
    ln = np.asarray(loss_neg, dtype=np.float64)
    log_pu = np.minimum(np.logaddexp(-lp, -ln), np.log1p(-UTIL_EPS))
    near_one = log_pu > -np.log(2.0)
    safe_near = np.where(near_one, log_pu, -1.0)
    safe_far = np.where(near_one, -1.0, log_pu)
    log_1m = np.where(near_one, np.log(-np.expm1(safe_near)), np.log1p(-np.exp(safe_far)))
    return log_pu - log_1m


@dataclass(frozen=True)
class EncodedPair:
    """A prompt and both its answers, tokenised by the token rule."""

    prompt: tuple[int, ...]
    positive: tuple[int, ...]
    negative: tuple[int, ...]

    @property
    def width(self) -> int:
        return len(self.prompt) + len(self.positive) + len(self.negative)

    def __len__(self) -> int:
        return self.width


def encode_pair(tokenizer, prompt_text: str, positive: str, negative: str) -> EncodedPair:
    pos, neg = encode(tokenizer, prompt_text, positive), encode(tokenizer, prompt_text, negative)
    return EncodedPair(pos.ids[: pos.n_prompt], pos.ids[pos.n_prompt :], neg.ids[neg.n_prompt :])


def packed_inputs(batch: Sequence[EncodedPair], device, dtype, config) -> dict:
    """One row per pair: [prompt | A_p | A_n] with positions and a 4D additive mask such that
    A_n restarts at the prompt's end and never sees A_p. The prompt runs once for both answers.

    Models with sliding-window layers (Gemma-2, some Qwen2) get a mask per layer type, the sliding
    one limited by position distance exactly as the model's own mask would be."""
    width = max(e.width for e in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    positions = torch.zeros(len(batch), width, dtype=torch.long)
    allowed = torch.zeros(len(batch), width, width, dtype=torch.bool)
    for row, e in enumerate(batch):
        p, a, b = len(e.prompt), len(e.positive), len(e.negative)
        ids[row, : e.width] = torch.tensor(e.prompt + e.positive + e.negative)
        positions[row, : p + a] = torch.arange(p + a)
        positions[row, p + a : e.width] = torch.arange(p, p + b)
        causal = torch.ones(p + a, p + a, dtype=torch.bool).tril()
        allowed[row, : p + a, : p + a] = causal
        allowed[row, p + a : e.width, :p] = True
        allowed[row, p + a : e.width, p + a : e.width] = torch.ones(b, b, dtype=torch.bool).tril()
        allowed[row, e.width :, e.width :] = torch.eye(width - e.width, dtype=torch.bool)  # padding sees itself
    additive = lambda keep: torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, torch.finfo(dtype).min)[:, None]  # noqa: E731
    mask = additive(allowed).to(device)
    layer_types = set(getattr(config, "layer_types", None) or ())
    if "sliding_attention" in layer_types:
        near = positions[:, :, None] - positions[:, None, :] < config.sliding_window
        mask = {"full_attention": mask, "sliding_attention": additive(allowed & near).to(device)}
    return {"input_ids": ids.to(device), "position_ids": positions.to(device), "attention_mask": mask}


def packed_targets(batch: Sequence[EncodedPair]) -> tuple[list[int], list[int], list[int], list[int]]:
    """(row, position, target, which) of every answer token; which = 0 for A_p, 1 for A_n.
    The first token of either answer is predicted from the prompt's last position."""
    rows, positions, targets, which = [], [], [], []
    for row, e in enumerate(batch):
        p, a = len(e.prompt), len(e.positive)
        for k, answer, start in ((0, e.positive, p), (1, e.negative, p + a)):
            for t, token in enumerate(answer):
                rows.append(row)
                positions.append(p - 1 if t == 0 else start + t - 1)
                targets.append(token)
                which.append(k)
    return rows, positions, targets, which


def pair_logprobs(model: nn.Module, batch: Sequence[EncodedPair], per_token: bool = False) -> torch.Tensor:
    """[B, 2]: Σ log p(A_p) and Σ log p(A_n) for every pair, in one packed forward per pair.

    Equal to scoring [prompt | A_p] and [prompt | A_n] as two sequences up to float rounding, at
    about two thirds of the cost when prompts are as long as the answers. Differentiable.
    """
    param = next(model.parameters())
    inputs = packed_inputs(batch, param.device, param.dtype, model.config)
    hidden = model.get_decoder()(**inputs).last_hidden_state
    rows, positions, targets, which = (torch.tensor(x, device=param.device) for x in packed_targets(batch))
    cap = getattr(model.config, "final_logit_softcapping", None)
    token_lp = answer_logprobs(model.get_output_embeddings(), hidden[rows, positions], targets, cap)
    sums = torch.zeros(len(batch) * 2, dtype=token_lp.dtype, device=param.device)
    sums = sums.index_add(0, rows * 2 + which, token_lp).view(len(batch), 2)
    if per_token:
        counts = [[len(e.positive), len(e.negative)] for e in batch]
        sums = sums / torch.tensor(counts, device=param.device, dtype=sums.dtype)
    return sums
