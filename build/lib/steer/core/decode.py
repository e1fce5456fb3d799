"""One KV-cached decode batch: the rows that decode together, each with its own steering and sampling.

``steer.core.generate`` (a fixed list of prompts) and ``steer.serve``'s engine (requests that come
and go) both decode through a ``DecodeBatch``: ``admit`` prefills new rows together, left-padded,
and merges their KV cache into the running batch's; ``pick`` chooses every row's next token;
``keep`` lets finished rows leave (their cache rows go, and the columns only padding holds are cut
off); ``step`` runs one decode step for the rest. A row's runs and multipliers reach the model
through ``steer.core.interventions.RowInterventions``, so rows of different runs, compositions and
m share every forward.

KV cache: transformers' ``DynamicCache`` with left padding. The attention mask comes from the
lengths, never from ``ids != pad_id`` (SmolLM2's pad token also ends every chat turn), and position
ids count only real tokens. Joining a batch left-pads the shorter of (running cache, newcomers'
cache) to the longer and concatenates the rows. Sliding-window layers (Gemma-2) keep their last
``window - 1`` columns. Cost: every step attends over the longest live row's length for every row.

Sampling draws one uniform per row and step from the row's own generator and picks the token by
inverse CDF (``sample_tokens``), so a row's answer depends on nothing else in its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from steer.core.interventions import RowInterventions, Steering


class Row(Protocol):
    """What a decode batch needs of a row: its prompt ids, steering and sampling."""

    ids: tuple[int, ...]
    steer: Steering
    generator: torch.Generator | None  # None: greedy
    temperature: float
    top_p: float


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists to a rectangle; the mask marks each row's last ``len(row)`` columns."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


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


def pad_cache_left(cache, width: int, new_width: int) -> None:
    """Left-pad every layer of ``cache`` (holding ``width`` columns) to ``new_width`` columns."""
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        target = _kept(layer, new_width)
        extra = target - layer.keys.shape[-2]
        if extra > 0:
            layer.keys = F.pad(layer.keys, (0, 0, extra, 0))
            layer.values = F.pad(layer.values, (0, 0, extra, 0))
        if getattr(layer, "is_sliding", False):
            layer.cumulative_length = new_width


def trim_cache_left(cache, new_width: int) -> None:
    """Drop leading columns so every layer of ``cache`` holds what a ``new_width``-column mask needs."""
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        target = _kept(layer, new_width)
        if layer.keys.shape[-2] > target:
            layer.keys = layer.keys[:, :, layer.keys.shape[-2] - target :]
            layer.values = layer.values[:, :, layer.values.shape[-2] - target :]
        if getattr(layer, "is_sliding", False):
            layer.cumulative_length = new_width


def _kept(layer, width: int) -> int:
    """Columns a layer keeps for a mask of ``width`` columns: all, or the last ``window - 1``."""
    if getattr(layer, "is_sliding", False):
        return min(width, layer.sliding_window - 1)
    return width


def concat_caches(cache, other) -> None:
    """Append ``other``'s rows to ``cache`` (both already the same width), layer by layer."""
    for layer, more in zip(cache.layers, other.layers, strict=True):
        if not getattr(layer, "is_initialized", False):
            continue
        layer.keys = torch.cat([layer.keys, more.keys], dim=0)
        layer.values = torch.cat([layer.values, more.values], dim=0)


class DecodeBatch:
    """The rows decoding together over ``model``, steered through ``runs`` (attached by the caller).

    ``rows`` are in batch order; ``logits`` holds every row's next-token logits after ``admit`` or
    ``step``. Call under ``torch.inference_mode``.
    """

    def __init__(self, model: nn.Module, runs: RowInterventions, pad_id: int) -> None:
        self.model, self.runs, self.pad_id = model, runs, pad_id
        self.device = next(model.parameters()).device
        self.rows: list = []
        self.logits: torch.Tensor | None = None
        self._cache = None
        self._mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, rows: Sequence[Row]) -> None:
        """Prefill ``rows`` together and merge them into the running batch."""
        from transformers import DynamicCache

        ids, mask = left_pad([row.ids for row in rows], self.pad_id, self.device)
        cache = DynamicCache(config=self.model.config)
        self.runs.set_rows([row.steer for row in rows])
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1]
        if not self.rows:
            self._cache, self._mask, self.logits, self.rows = cache, mask, logits, list(rows)
            return
        width, new = self._mask.shape[-1], mask.shape[-1]
        if width < new:
            pad_cache_left(self._cache, width, new)
            self._mask = F.pad(self._mask, (new - width, 0))
        elif new < width:
            pad_cache_left(cache, new, width)
            mask = F.pad(mask, (width - new, 0))
        concat_caches(self._cache, cache)
        self._mask = torch.cat([self._mask, mask], dim=0)
        self.logits = torch.cat([self.logits, logits], dim=0)
        self.rows.extend(rows)

    def pick(self) -> torch.Tensor:
        """Every row's next token: argmax for greedy rows; seeded inverse-CDF sampling for the
        others (grouped by temperature and top_p)."""
        tokens = self.logits.argmax(-1)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, row in enumerate(self.rows):
            if row.generator is not None:
                groups.setdefault((row.temperature, row.top_p), []).append(i)
        for (temperature, top_p), rows in groups.items():
            uniforms = torch.stack([torch.rand((), generator=self.rows[i].generator) for i in rows])
            index = torch.tensor(rows, device=self.logits.device)
            tokens[index] = sample_tokens(self.logits[index], uniforms, temperature, top_p)
        return tokens

    def finite(self) -> list[bool]:
        """Whether each row's next-token logits are all finite (an m too large for the dtype is not)."""
        return torch.isfinite(self.logits).all(-1).tolist()

    def keep(self, keep: Sequence[int]) -> None:
        """Keep only rows ``keep`` (indices into ``rows``); cut the columns only padding holds."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self._cache, self._mask, self.logits = [], None, None, None
            return
        index = torch.tensor(list(keep), device=self.device)
        self._cache.batch_select_indices(index)
        self._mask, self.logits = self._mask[index], self.logits[index]
        self.rows = [self.rows[i] for i in keep]
        lead = int((self._mask.sum(0) == 0).long().cumprod(0).sum())
        if lead:
            self._mask = self._mask[:, lead:]
            trim_cache_left(self._cache, self._mask.shape[-1])

    def step(self, tokens: torch.Tensor) -> None:
        """Feed every row its next token ([len(rows)]); ``logits`` then holds the token after it."""
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], dim=-1)
        self.runs.set_rows([row.steer for row in self.rows])
        out = self.model(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=self._mask,
            position_ids=self._mask.sum(-1, keepdim=True) - 1,
            cache=self._cache,
            use_cache=True,
        )
        self.logits = out.logits[:, -1]
