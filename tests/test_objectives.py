"""The three training losses against hand computations on fixed tensors, and SFT/SPLIT's default
reduction against an independent computation of the authors' formula on a real (tiny) model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from steer.core.interventions import new_intervention
from steer.core.metrics import EncodedPair
from steer.objectives import SFT, SPLIT, RePS, Side, make_objective, reps_loss, sft_loss, split_loss
from steer.objectives.training import SteeredLogprobs, batch_loss, cache_prefix
from tests.conftest import tiny_model


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
    assert SFT(reduction="sum")(win, None).item() == pytest.approx(8.0)
    assert SFT(reduction="example_token_mean")(win, None).item() == pytest.approx(2.0)
    # per token: L_w = 2, L_l = 2, margin 0 < 0.5: 2 + 0.5*2 + 6*0.5
    assert SPLIT(reduction="example_token_mean")(win, lose).item() == pytest.approx(6.0)
    # sequence lengths (AxBench): scale 3, logits = 3*(-8)/10 + 6/8 = -1.65
    assert RePS()(win, lose).item() == pytest.approx(math.log1p(math.exp(1.65)))
    # answer lengths: logits = 3*(-8)/4 + 6/3 = -4
    assert RePS(length="answer")(win, lose).item() == pytest.approx(math.log1p(math.exp(4.0)))


def test_make_objective_names_bad_keys_and_values():
    assert make_objective("split", {"gamma": 4, "theta": 0.3}) == SPLIT(gamma=4, theta=0.3)
    with pytest.raises(ValueError, match="objective.gama is not an option of split"):
        make_objective("split", {"gama": 4.0})
    with pytest.raises(ValueError, match=r"objective.reduction=1 must be a str"):
        make_objective("sft", {"reduction": 1})
    with pytest.raises(
        ValueError, match="objective.reduction='mean' is not one of batch_token_mean, example_token_mean, sum"
    ):
        make_objective("split", {"reduction": "mean"})
    with pytest.raises(ValueError, match="objective.per_token is not an option of sft"):
        make_objective("sft", {"per_token": True})
    with pytest.raises(ValueError, match="objective.gamma=True must be a float"):
        make_objective("split", {"gamma": True})
    with pytest.raises(ValueError, match="objective.length='tokens' is not one of"):
        make_objective("reps", {"length": "tokens"})
    with pytest.raises(ValueError, match="objective='dpo' is not one of diffmean, sft, reps, split"):
        make_objective("dpo", {})


def rows(*values: tuple[float, float]) -> Side:
    """A side of several rows: (summed log p, answer tokens) each."""
    logp, n = zip(*values, strict=True)
    return Side(t(*logp), t(*logp), t(*n), t(*n))


def test_the_three_reductions_by_hand():
    # winners: log p -2 over 1 token, -12 over 4; losers: -3 over 1, -16 over 4
    win, lose = rows((-2.0, 1.0), (-12.0, 4.0)), rows((-3.0, 1.0), (-16.0, 4.0))
    # batch: L_w = 14/5 = 2.8, L_l = 19/5 = 3.8, margin 1.0 > theta: 2.8 + 0.5*3.8
    assert SFT()(win, lose).item() == pytest.approx(2.8)
    assert SPLIT(theta=0.5)(win, lose).item() == pytest.approx(2.8 + 1.9)
    # per example: (2, 3) margin 1 (off), (3, 4) margin 1 (off): mean of 3.5 and 5
    assert SFT(reduction="example_token_mean")(win, lose).item() == pytest.approx(2.5)
    assert SPLIT(reduction="example_token_mean", theta=0.5)(win, lose).item() == pytest.approx(4.25)
    # sums: (2, 3) margin 1 (off); (12, 16) margin 4 (off): mean of 3.5 and 20
    assert SPLIT(reduction="sum", theta=0.5)(win, lose).item() == pytest.approx(11.75)
    # the hinge of the batch means is not the mean of the rows' hinges: per-row margins 0.5 and 2,
    # batch margin 1.25 (L_w = 3, L_l = 4.25); at theta = 1.2 only the first row's binds.
    win, lose = rows((-2.0, 1.0), (-4.0, 1.0)), rows((-2.5, 1.0), (-6.0, 1.0))
    assert SPLIT(lambda_n=0.0, theta=1.2)(win, lose).item() == pytest.approx(3.0)
    example = SPLIT(lambda_n=0.0, theta=1.2, reduction="example_token_mean")(win, lose).item()
    assert example == pytest.approx(3.0 + 6 * (1.2 - 0.5) / 2)


def official_losses(model, pairs, iv, factors):
    """The authors' formula, computed apart from steer's packed rows: each direction's winner and
    loser as plain sequences [prompt | answer] with labels -100 on the prompt, steered at the row's
    factor (+m: winner A_p, -m: winner A_n), ``F.cross_entropy`` over the minibatch's answer labels
    (the mean per answer token, as ``outputs.loss``) for the winners and for the losers."""
    directions = [(p, p.positive, p.negative, m) for p, m in zip(pairs, factors, strict=True)]
    directions += [(p, p.negative, p.positive, -m) for p, m in zip(pairs, factors, strict=True)]

    def mean_cross_entropy(answers: list[tuple[int, ...]]) -> torch.Tensor:
        seqs = [list(d[0].prompt) + list(a) for d, a in zip(directions, answers, strict=True)]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100)
        for row, (seq, d) in enumerate(zip(seqs, directions, strict=True)):
            ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
            labels[row, len(d[0].prompt) : len(seq)] = torch.tensor(seq[len(d[0].prompt) :])
        with iv.attached(model, multiplier=torch.tensor([d[3] for d in directions], dtype=torch.float64)):
            logits = model(input_ids=ids, attention_mask=mask).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    return mean_cross_entropy([d[1] for d in directions]), mean_cross_entropy([d[2] for d in directions])


@pytest.mark.parametrize("form", ["vector", "lora"])
def test_default_sft_and_split_equal_the_official_minibatch_formula(form):
    model = tiny_model("llama").double()
    pairs = [
        EncodedPair((5, 9, 14, 3), (22, 7), (40, 41, 42, 43, 44)),
        EncodedPair((8, 1, 2), (17, 18, 19, 20), (60,)),
        EncodedPair((30, 31, 32, 33, 34), (90, 91, 92), (100, 101)),
    ]
    factors = [1.5, 0.5, 2.0]
    iv = new_intervention(model, form, 2, rank=2, init_scale=0.5, seed=3).double()
    with torch.no_grad():
        for p in iv.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype))
    with torch.no_grad():
        pos, neg = official_losses(model, pairs, iv, factors)
        cache = cache_prefix(model, pairs, 2, batch_size=3)
        iv.attach(model)
        module = SteeredLogprobs(iv, model)
        ours = {
            name: batch_loss(module, objective, cache, [0, 1, 2], factors).item()
            for name, objective in {
                "sft": SFT(),
                "split": SPLIT(lambda_n=0.5, gamma=8.0, theta=0.3),
                "split, margin binding": SPLIT(lambda_n=0.5, gamma=8.0, theta=5.0),
                "split per example": SPLIT(lambda_n=0.5, gamma=8.0, theta=5.0, reduction="example_token_mean"),
            }.items()
        }
        iv.detach()
    official = {
        "sft": pos.item(),
        "split": (pos + 0.5 * neg + 8.0 * F.relu(0.3 - (neg - pos))).item(),
        "split, margin binding": (pos + 0.5 * neg + 8.0 * F.relu(5.0 - (neg - pos))).item(),
    }
    assert 5.0 - (neg - pos).item() > 0  # the margin term is on in the third case
    for name, value in official.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
    # per example is another quantity (different answer lengths): the test can tell them apart
    assert abs(ours["split per example"] - official["split, margin binding"]) > 1e-3
