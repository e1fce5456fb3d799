"""The three training losses against hand computations on fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from steer.objectives import SFT, SPLIT, RePS, Side, make_objective, reps_loss, sft_loss, split_loss


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_sft_is_the_winner_negative_log_likelihood():
    assert torch.equal(sft_loss(t(-3.0, -1.5)), t(3.0, 1.5))


def test_split_margin_on_and_off():
    # L_w = 2, L_l = 3: L_l - L_w = 1 > theta = 0.5, the ReLU is off: 1*2 + 0.5*3.
    # L_w = 2, L_l = 2.2: margin 0.2 < 0.5, the ReLU adds 6*(0.5 - 0.2) = 1.8: 2 + 1.1 + 1.8.
    logp_lose = t(-3.0, -2.2, grad=True)
    loss = split_loss(t(-2.0, -2.0), logp_lose, lambda_win=1.0, lambda_lose=0.5, gamma=6.0, theta=0.5)
    assert loss.tolist() == pytest.approx([3.5, 4.9])
    loss.sum().backward()
    # d loss / d log p(loser): -lambda_l when the margin is met, -lambda_l + gamma while it is not.
    assert logp_lose.grad.tolist() == pytest.approx([-0.5, 5.5])


def test_split_margin_exactly_at_theta_is_off():
    loss = split_loss(t(-1.0), t(-1.5), lambda_win=1.0, lambda_lose=0.0, gamma=8.0, theta=0.5)
    assert loss.item() == pytest.approx(1.0)


def test_reps_scaled_simpo_by_hand():
    # scale = max(log p_ref(l) - log p_ref(w), 1) = max(-9 + 12, 1) = 3
    # logits = 3 * (-10) / 5 - (-8) / 4 = -4;  loss = -log sigmoid(-4) = log(1 + e^4)
    logp_win = t(-10.0, -10.0, grad=True)
    ref_win, ref_lose = t(-12.0, -9.0, grad=True), t(-9.0, -12.0, grad=True)
    loss = reps_loss(logp_win, t(-8.0, -8.0), ref_win, ref_lose, t(5.0, 5.0), t(4.0, 4.0))
    # second row: the reference prefers the winner, the scale is clamped at 1: logits = -2 + 2 = 0.
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(4.0)), math.log(2.0)])
    loss.sum().backward()
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert logp_win.grad.tolist() == pytest.approx([-(1 - sigmoid(-4.0)) * 3 / 5, -(1 - sigmoid(0.0)) / 5])
    # the scaling factor is a constant: no gradient flows into the reference log-likelihoods
    assert ref_win.grad is None or torch.all(ref_win.grad == 0)


def test_reps_simpo_scaler_multiplies_the_reference_gap():
    # scale = max(0.5 * 3, 1) = 1.5; logits = 1.5 * (-10) / 5 + 2 = -1
    loss = reps_loss(t(-10.0), t(-8.0), t(-12.0), t(-9.0), t(5.0), t(4.0), simpo_scaler=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.e))


def side(logp: float, ref: float = 0.0, n_answer: float = 1.0, n_sequence: float = 1.0) -> Side:
    return Side(t(logp), t(ref), t(n_answer), t(n_sequence))


def test_objective_classes_pick_the_right_quantities():
    win, lose = side(-8.0, -12.0, n_answer=4.0, n_sequence=10.0), side(-6.0, -9.0, n_answer=3.0, n_sequence=8.0)
    assert SFT()(win, None).item() == pytest.approx(8.0)
    assert SFT(per_token=True)(win, None).item() == pytest.approx(2.0)
    # per token: L_w = 2, L_l = 2, margin 0 < 0.5: 2 + 0.5*2 + 6*0.5
    assert SPLIT(per_token=True)(win, lose).item() == pytest.approx(6.0)
    # sequence lengths (AxBench): scale 3, logits = 3*(-8)/10 + 6/8 = -1.65
    assert RePS()(win, lose).item() == pytest.approx(math.log1p(math.exp(1.65)))
    # answer lengths: logits = 3*(-8)/4 + 6/3 = -4
    assert RePS(length="answer")(win, lose).item() == pytest.approx(math.log1p(math.exp(4.0)))


def test_make_objective_names_bad_keys_and_values():
    assert make_objective("split", {"gamma": 4, "theta": 0.3}) == SPLIT(gamma=4, theta=0.3)
    with pytest.raises(ValueError, match="objective.gama is not an option of split"):
        make_objective("split", {"gama": 4.0})
    with pytest.raises(ValueError, match=r"objective.per_token='yes' must be a bool"):
        make_objective("sft", {"per_token": "yes"})
    with pytest.raises(ValueError, match="objective.gamma=True must be a float"):
        make_objective("split", {"gamma": True})
    with pytest.raises(ValueError, match="objective.length='tokens' is not one of"):
        make_objective("reps", {"length": "tokens"})
    with pytest.raises(ValueError, match="objective='dpo' is not one of diffmean, sft, reps, split"):
        make_objective("dpo", {})
