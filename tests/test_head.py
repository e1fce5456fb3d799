"""The chunked output head against an independent computation: F.cross_entropy over the full
logits, and autograd through them for the gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steer.core import head


def full_reference(linear: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = linear(hidden).double()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return -F.cross_entropy(logits, targets, reduction="none")


def frozen_head(vocab: int, d: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(d, vocab, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(4.0)  # logits of a few nats' spread, as a trained head gives
    return linear.requires_grad_(False)


@pytest.mark.parametrize("cap", [None, 7.5])
@pytest.mark.parametrize("bias", [False, True])
def test_value_and_gradient_equal_the_full_logits(cap, bias):
    # 2.5 chunks of vocabulary, so the last chunk is partial and targets fall in every chunk
    vocab = int(head.CHUNK * 2.5)
    linear = frozen_head(vocab, 48, bias)
    hidden = torch.randn(37, 48, dtype=torch.float64).float().requires_grad_(True)
    targets = torch.cat([torch.tensor([0, vocab - 1, head.CHUNK - 1, head.CHUNK]), torch.randint(0, vocab, (33,))])
    upstream = torch.randn(37)

    got = head.answer_logprobs(linear, hidden, targets, cap)
    (got_grad,) = torch.autograd.grad((got * upstream).sum(), hidden)
    want = full_reference(linear, hidden, targets, cap)
    (want_grad,) = torch.autograd.grad((want * upstream.double()).sum(), hidden)

    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want.detach(), atol=2e-6, rtol=0)
    assert torch.allclose(got_grad.double(), want_grad.double(), atol=2e-6, rtol=0)


def test_without_grad_the_same_values_and_no_graph():
    linear = frozen_head(3000, 32, bias=False)
    hidden = torch.randn(20, 32)
    targets = torch.randint(0, 3000, (20,))
    with torch.inference_mode():
        plain = head.answer_logprobs(linear, hidden, targets, None)
    tracked = head.answer_logprobs(linear, hidden.clone().requires_grad_(True), targets, None)
    assert not plain.requires_grad and tracked.requires_grad
    assert torch.equal(plain, tracked.detach())


def test_a_bf16_model_gets_fp32_log_probabilities():
    linear = frozen_head(2500, 32, bias=False).to(torch.bfloat16)
    hidden = torch.randn(10, 32).to(torch.bfloat16)
    targets = torch.randint(0, 2500, (10,))
    got = head.answer_logprobs(linear, hidden, targets, None)
    want = full_reference(linear, hidden, targets, None)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=0)


def test_a_trainable_head_takes_the_full_logits_and_gets_its_gradient():
    linear = frozen_head(2500, 16, bias=False).requires_grad_(True)
    hidden = torch.randn(5, 16)
    targets = torch.randint(0, 2500, (5,))
    head.answer_logprobs(linear, hidden, targets, None).sum().backward()
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0
