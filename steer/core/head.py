"""Answer-token log-probabilities through the output head, one vocabulary chunk at a time.

log p(y_t) = z_t − logsumexp(z) needs every logit of an answer position, but never all of them at
once. The head's weight is taken ``CHUNK`` rows at a time; each chunk's logits, their max, exp and
sum stay in cache, and only a [positions, chunks] table of partial logsumexps reaches memory. On a
CPU the full [positions × vocabulary] logits (113 MB at 576 answer tokens of SmolLM2) run the head
at about half the matmul rate of the layers; in chunks it runs near it.

Training needs the gradient with respect to the hidden states, and with the head frozen that
gradient is g · (s_t·W_t − Σ_v p_v s_v W_v) per position (s the soft-cap's derivative, 1 without
one): a softmax-weighted mean of the head's rows. It is computed in the same chunked pass, flash-
attention style (each chunk's share rescaled once the total logsumexp is known), so the backward is
one multiplication and the logits are never kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Vocabulary rows per chunk: [576 × 1024] fp32 logits are 2.4 MB, and the chunk of SmolLM2's head
# 1024 × 576 fp32 another 2.4 MB: the fastest of 512..8192 on this CPU (docs/development.md).
CHUNK = 1024


def answer_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None) -> torch.Tensor:
    """log p(targets) at ``hidden`` [positions, d], at least fp32: the head's logits (soft-capped
    at ``cap`` as Gemma-2 caps them), normalised over the whole vocabulary. Differentiable in
    ``hidden``. A head that is not a plain frozen ``nn.Linear`` takes the full-logits way."""
    if not isinstance(head, nn.Linear) or head.weight.requires_grad:
        return _full(head, hidden, targets, cap)
    bias = head.bias.detach() if head.bias is not None else None
    return _ChunkedLogprob.apply(hidden, head.weight.detach(), bias, targets, cap)


def _full(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = _capped(head(hidden), cap)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least fp32 (a bf16 model)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _capped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return torch.tanh(logits / cap) * cap if cap else logits


class _ChunkedLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, cap):
        with torch.no_grad():
            lp, direction = _chunked(hidden, weight, bias, targets, cap, hidden.requires_grad)
        ctx.save_for_backward(direction)
        return lp

    @staticmethod
    def backward(ctx, grad):
        (direction,) = ctx.saved_tensors
        return (grad[:, None] * direction).to(direction.dtype), None, None, None, None


def _chunked(hidden, weight, bias, targets, cap, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(targets), d log p / d hidden or None) over vocabulary chunks. Each chunk keeps its
    max and its sum of exp(logit − max); they are combined in float64, so the chunking adds no
    rounding of its own to the logsumexp."""
    out = torch.promote_types(hidden.dtype, torch.float32)
    picked = torch.zeros(len(targets), dtype=out, device=hidden.device)
    maxima, sums, part_grad = [], [], []
    for start in range(0, weight.shape[0], CHUNK):
        rows = weight[start : start + CHUNK]
        raw = F.linear(hidden, rows, None if bias is None else bias[start : start + CHUNK]).to(out)
        logits = _capped(raw, cap)
        inside = (targets >= start) & (targets < start + len(rows))
        local = (targets - start).clamp(0, len(rows) - 1)
        picked = torch.where(inside, logits.gather(-1, local[:, None]).squeeze(-1), picked)
        top = logits.amax(dim=-1)
        mass = torch.exp(logits - top[:, None])
        maxima.append(top)
        sums.append(mass.sum(dim=-1))
        if want_grad:
            if cap:
                mass = mass * (1 - torch.tanh(raw / cap) ** 2)
            part_grad.append(mass.to(hidden.dtype) @ rows)
    top = torch.stack(maxima, dim=-1).double()
    peak = top.amax(dim=-1, keepdim=True)
    scale = torch.exp(top - peak)  # each chunk's sum in units of exp(peak)
    total = peak.squeeze(-1) + torch.log((torch.stack(sums, dim=-1).double() * scale).sum(dim=-1))
    lp = (picked.double() - total).to(out)
    if not want_grad:
        return lp, None
    share = (scale / torch.exp(total - peak.squeeze(-1))[:, None]).to(out)  # exp(max_c − logsumexp)
    expected = torch.einsum("pc,cpd->pd", share, torch.stack(part_grad).to(out))
    slope = 1 - (picked / cap) ** 2 if cap else torch.ones_like(picked)  # tanh(u/cap) = z/cap
    own = weight[targets].to(out) * slope[:, None]
    return lp, (own - expected).to(hidden.dtype)
