"""Prefix reuse: decoder layers before the steered layer do not depend on m.

An intervention at layer l (inside its ``down_proj`` or on its output) leaves the input of layer l
unchanged, so a sweep computes that input once per batch and, for every other multiplier, skips
layers 0..l-1 and feeds the cached tensor to layer l. The skipped layers are swapped for a
pass-through module, so the model's own forward (masks, rotary embeddings, Gemma-2's layer types)
runs unchanged around them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from steer.core.models import decoder_layers


class PassThrough(nn.Module):
    """Stands in for a skipped decoder layer: returns its hidden states untouched."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class Captured:
    value: torch.Tensor | None = None


@contextlib.contextmanager
def capture_layer_input(model: nn.Module, layer: int) -> Iterator[Captured]:
    """Record the hidden states entering decoder layer ``layer`` on the next forward."""
    captured = Captured()

    def grab(module, args, kwargs):
        captured.value = args[0] if args else kwargs["hidden_states"]

    handle = decoder_layers(model)[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def reuse_prefix(model: nn.Module, layer: int, hidden: torch.Tensor) -> Iterator[None]:
    """Inside the block, layers < ``layer`` are skipped and layer ``layer`` receives ``hidden``.

    ``hidden`` must come from ``capture_layer_input`` on the same input ids and mask.
    """
    layers = decoder_layers(model)
    originals = [layers[i] for i in range(layer)]

    def feed(module, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = layers[layer].register_forward_pre_hook(feed, with_kwargs=True)
    try:
        for i in range(layer):
            layers[i] = PassThrough()
        yield
    finally:
        for i, original in enumerate(originals):
            layers[i] = original
        handle.remove()
