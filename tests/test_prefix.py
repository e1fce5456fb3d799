"""Prefix reuse gives the same answer losses as running every layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steer.core.metrics import EncodedPair, pair_logprobs
from steer.core.prefix import capture_layer_input, reuse_prefix
from steer.core.sweep import grid_losses
from tests.conftest import randomised, reference_logprob, tiny_model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("form", ["local_weight", "lora", "vector"])
def test_reused_prefix_equals_full_forward(arch, form):
    model = tiny_model(arch)
    rng = np.random.default_rng(1)
    tokens = lambda n: tuple(int(x) for x in rng.integers(3, 120, n))  # noqa: E731
    batch = [EncodedPair(tokens(3), tokens(n), tokens(n - 2)) for n in (9, 4, 6)]
    iv = randomised(model, form, 2, scale=0.5)
    with torch.no_grad(), iv.attached(model, multiplier=0.0):
        with capture_layer_input(model, 2) as prefix:
            pair_logprobs(model, batch)
        for m in (-2.0, 1.0, 3.0):
            iv.set_multiplier(m)
            full = pair_logprobs(model, batch)
            with reuse_prefix(model, 2, prefix.value):
                reused = pair_logprobs(model, batch)
            assert torch.equal(reused, full)
    assert all(type(layer).__name__ != "PassThrough" for layer in model.model.layers)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_grid_losses_equal_one_unpacked_pass_per_answer_and_multiplier(arch):
    model = tiny_model(arch)
    rng = np.random.default_rng(2)
    tokens = lambda n: tuple(int(x) for x in rng.integers(3, 120, n))  # noqa: E731
    pairs = [EncodedPair(tokens(p), tokens(a), tokens(b)) for p, a, b in [(4, 2, 3), (6, 5, 1), (3, 3, 7), (8, 2, 2)]]
    iv = randomised(model, "lora", 2, scale=0.5)
    grid = [-1.0, 0.0, 2.0]
    got = grid_losses(model, pairs, iv, grid, batch_size=3, progress=False)
    for k, m in enumerate(grid):
        with torch.no_grad(), iv.attached(model, multiplier=m):
            for i, e in enumerate(pairs):
                for j, answer in enumerate((e.positive, e.negative)):
                    want = -reference_logprob(model, list(e.prompt + answer), len(e.prompt))
                    assert got[k, i, j] == pytest.approx(want, abs=1e-5)
