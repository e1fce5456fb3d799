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


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own output head on final hidden states, including Gemma-2's soft-capping."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def answer_targets(batch: Sequence[Encoded], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, position, target) of every answer token: position t predicts ids[t + 1]."""
    rows, positions, targets = [], [], []
    for row, e in enumerate(batch):
        for t in range(e.n_prompt - 1, len(e.ids) - 1):
            rows.append(row)
            positions.append(t)
            targets.append(e.ids[t + 1])
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return as_tensor(rows), as_tensor(positions), as_tensor(targets)


def answer_logprobs(model: nn.Module, batch: Sequence[Encoded], per_token: bool = False) -> torch.Tensor:
    """Σ_t log p(answer token t) for every sequence of ``batch`` (mean over tokens if
    ``per_token``). Differentiable; only answer positions go through the output head."""
    device = next(model.parameters()).device
    ids, mask = collate(batch, device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    rows, positions, targets = answer_targets(batch, device)
    logits = lm_logits(model, hidden[rows, positions]).float()
    token_lp = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    sums = torch.zeros(len(batch), dtype=token_lp.dtype, device=device).index_add(0, rows, token_lp)
    if per_token:
        sums = sums / torch.tensor([e.n_answer for e in batch], device=device, dtype=sums.dtype)
    return sums


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
