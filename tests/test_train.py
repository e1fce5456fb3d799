"""The training loop on tiny models: prefix cache, accumulation, resume, what it changes."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch
from accelerate import Accelerator

import steer.objectives.training as train_module
from steer.core.interventions import new_intervention
from steer.core.metrics import EncodedPair, pair_logprobs
from steer.objectives import SFT, SPLIT, RePS
from steer.objectives.training import (
    LOG_COLUMNS,
    Cached,
    SteeredLogprobs,
    TrainSettings,
    batch_loss,
    cache_prefix,
    padded_hidden,
    train_intervention,
)
from tests.conftest import tiny_model

LAYER = 2


def tiny_pairs(n: int, seed: int = 0) -> list[EncodedPair]:
    """n random pairs of different widths (so rows need padding)."""
    rng = random.Random(seed)
    tokens = lambda low, high: tuple(rng.randrange(1, 128) for _ in range(rng.randint(low, high)))  # noqa: E731
    return [EncodedPair(tokens(4, 7), tokens(2, 5), tokens(2, 5)) for _ in range(n)]


def settings(**overrides) -> TrainSettings:
    base = dict(lr=0.05, epochs=3, batch_size=4, train_factors=(0.5, 1.0, 2.0), seed=0)
    return TrainSettings(**{**base, **overrides})


def run_training(model, form, objective, pairs, tmp_path=None, **overrides):
    iv = new_intervention(model, form, LAYER, rank=2, init_scale=0.01, seed=1)
    report = train_intervention(
        model,
        pairs,
        iv,
        objective,
        settings(**overrides),
        Accelerator(cpu=True),
        progress=False,
        log_path=None if tmp_path is None else tmp_path / "train_log.csv",
        checkpoint=None if tmp_path is None else tmp_path / "ckpt.pt",
        fingerprint="f",
    )
    return iv, report


@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_cached_prefix_forward_equals_the_full_forward(tiny, form):
    pairs = tiny_pairs(6)
    cache = cache_prefix(tiny, pairs, LAYER, batch_size=4)
    with torch.no_grad():
        reference = pair_logprobs(tiny, pairs)
    torch.testing.assert_close(torch.tensor([c.ref_logp for c in cache]), reference, rtol=0, atol=1e-5)
    iv = new_intervention(tiny, form, LAYER, rank=2, init_scale=0.5, seed=3)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in iv.parameters():
            p.add_(0.3 * torch.randn_like(p))
    multipliers = torch.tensor([1.5, -2.0, 0.5, 1.0, -0.7, 2.5])
    with torch.no_grad(), iv.attached(tiny, multiplier=multipliers):
        full = pair_logprobs(tiny, pairs)
        cached = SteeredLogprobs(iv, tiny)(pairs, multipliers, padded_hidden([c.hidden for c in cache], "cpu"))
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-4)
    assert not torch.allclose(full, reference)  # the intervention did act


class FixedLogprobs(torch.nn.Module):
    """Returns given log p rows and records the multipliers it was called with."""

    def __init__(self, logp: torch.Tensor) -> None:
        super().__init__()
        self.logp = torch.nn.Parameter(logp)
        self.multipliers = None

    def forward(self, pairs, multipliers, hidden):
        self.multipliers = multipliers
        return self.logp


def test_batch_loss_scores_both_directions_with_swapped_roles():
    cache = [
        Cached(EncodedPair((1, 2, 3), (4, 5), (6, 7, 8)), torch.zeros(8, 2), (-1.0, -2.0)),
        Cached(EncodedPair((1, 2), (3,), (4, 5)), torch.zeros(5, 2), (-3.0, -4.0)),
    ]
    # rows: pair 0 at +2, pair 1 at +0.5, pair 0 at -2, pair 1 at -0.5; columns (A_p, A_n)
    module = FixedLogprobs(torch.tensor([[-10.0, -20.0], [-30.0, -40.0], [-11.0, -21.0], [-31.0, -41.0]]))
    seen = {}

    def objective(win, lose):
        seen.update(win=win, lose=lose)
        return (win.logp - lose.logp).mean()

    loss = batch_loss(module, objective, cache, [0, 1], [2.0, 0.5])
    assert module.multipliers.tolist() == [2.0, 0.5, -2.0, -0.5]
    win, lose = seen["win"], seen["lose"]
    assert win.logp.tolist() == [-10, -30, -21, -41] and lose.logp.tolist() == [-20, -40, -11, -31]
    assert win.ref_logp.tolist() == [-1, -3, -2, -4] and lose.ref_logp.tolist() == [-2, -4, -1, -3]
    assert win.n_answer.tolist() == [2, 1, 3, 2] and lose.n_answer.tolist() == [3, 2, 2, 1]
    assert win.n_sequence.tolist() == [5, 3, 6, 4] and lose.n_sequence.tolist() == [6, 4, 5, 3]
    assert loss.item() == pytest.approx((10 + 10 - 10 - 10) / 4)


@pytest.mark.parametrize("objective", [SFT(), SPLIT(), RePS()], ids=["sft", "split", "reps"])
def test_training_changes_only_delta_and_separates_the_answers(objective):
    model = tiny_model("llama")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = tiny_pairs(4)
    iv, report = run_training(model, "vector", objective, pairs, epochs=8, lr=0.1)
    assert all(torch.equal(base[k], v) for k, v in model.state_dict().items())
    assert not model.get_decoder().layers[LAYER]._forward_hooks  # detached after training
    assert report.steps == 8 and len(report.log) == 8
    with torch.no_grad():
        bare = pair_logprobs(model, pairs)
        with iv.attached(model, multiplier=1.0):
            up = pair_logprobs(model, pairs)
        with iv.attached(model, multiplier=-1.0):
            down = pair_logprobs(model, pairs)
    pref = lambda lp: (lp[:, 0] - lp[:, 1]).mean().item()  # noqa: E731
    assert pref(up) > pref(bare) > pref(down)


def test_gradient_accumulation_matches_one_big_batch():
    """With a per-example reduction; ``batch_token_mean`` reduces each micro-step on its own (as the
    paper's code does each minibatch), so there accumulation is not one big batch."""
    pairs = tiny_pairs(4)
    model = tiny_model("qwen2")
    objective = SPLIT(reduction="example_token_mean")
    big, _ = run_training(model, "lora", objective, pairs, batch_size=4, grad_accum=1)
    small, report = run_training(model, "lora", objective, pairs, batch_size=2, grad_accum=2)
    assert report.steps == 3  # one optimiser step per epoch either way
    for name, value in big.tensors().items():
        torch.testing.assert_close(small.tensors()[name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_interrupted_run_resumes_from_its_epoch_checkpoint(tmp_path, monkeypatch, dropout):
    """Also with dropout on Δh: its masks depend on (seed, epoch), so the resumed run draws the same."""
    pairs = tiny_pairs(6)
    model = tiny_model("gemma2")
    straight, straight_report = run_training(model, "local_weight", RePS(), pairs, batch_size=2, dropout=dropout)

    save = train_module._save_checkpoint

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_training(model, "local_weight", RePS(), pairs, tmp_path, batch_size=2, dropout=dropout)
    assert len(pd.read_csv(tmp_path / "train_log.csv")) == 3  # the first epoch was logged
    monkeypatch.setattr(train_module, "_save_checkpoint", save)

    resumed, report = run_training(model, "local_weight", RePS(), pairs, tmp_path, batch_size=2, dropout=dropout)
    assert report.resumed_epochs == 1 and report.steps == 6
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert list(log.columns) == LOG_COLUMNS and log["step"].tolist() == list(range(1, 10))
    assert log["loss"].tolist() == pytest.approx([r["loss"] for r in straight_report.log], rel=1e-5)
    for name, value in straight.tensors().items():
        torch.testing.assert_close(resumed.tensors()[name], value, rtol=1e-5, atol=1e-7)


def test_checkpoint_of_another_configuration_is_ignored(tmp_path):
    pairs = tiny_pairs(4)
    model = tiny_model("llama")
    torch.save({"fingerprint": "other", "epochs_done": 2}, tmp_path / "ckpt.pt")
    _, report = run_training(model, "vector", SFT(), pairs, tmp_path)  # fingerprint "f"
    assert report.resumed_epochs == 0 and report.steps == 3


def test_bad_settings_name_their_key():
    with pytest.raises(ValueError, match=r"train.factors=\(\) is not valid"):
        settings(train_factors=())
    with pytest.raises(ValueError, match="train.epochs=0 is not valid"):
        settings(epochs=0)
    with pytest.raises(ValueError, match=r"train.dropout=1.0 is not valid: it must be a number in \[0, 1\)"):
        settings(dropout=1.0)
    with pytest.raises(ValueError, match="train.directions='minus' is not valid: it must be both or positive"):
        settings(directions="minus")


def test_positive_direction_scores_only_plus_m():
    cache = [Cached(EncodedPair((1, 2, 3), (4, 5), (6, 7, 8)), torch.zeros(8, 2), (-1.0, -2.0))] * 2
    module = FixedLogprobs(torch.tensor([[-10.0, -20.0], [-30.0, -40.0]]))
    seen = {}

    def objective(win, lose):
        seen.update(win=win, lose=lose)
        return (win.logp - lose.logp).mean()

    batch_loss(module, objective, cache, [0, 1], [2.0, 0.5], both=False)
    assert module.multipliers.tolist() == [2.0, 0.5]
    assert seen["win"].logp.tolist() == [-10, -30] and seen["lose"].logp.tolist() == [-20, -40]


def test_dropout_drops_the_vector_per_row_only_while_training():
    """Δh at the steered layer: with dropout p each row's Δb is kept whole or dropped per
    coordinate, the same at every position, and scaled by 1/(1 - p); in eval mode it is Δb."""
    model = tiny_model("llama")
    iv = new_intervention(model, "vector", LAYER, rank=None, init_scale=1.0, seed=0)
    iv.dropout = 0.5
    iv.attach(model)
    seen = []
    layer = model.get_decoder().layers[LAYER]
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    ids = torch.randint(1, 128, (4, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        iv.set_multiplier(torch.zeros(4))
        model(input_ids=ids)
        iv.set_multiplier(torch.ones(4))
        torch.manual_seed(0)
        model(input_ids=ids)
        iv.eval()
        model(input_ids=ids)
    handle.remove()
    iv.detach()
    bare, dropped, evaluated = seen
    diff, delta_b = dropped - bare, iv.delta_b.detach()
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), rtol=0, atol=1e-5)  # one mask per row
    kept = (diff[:, 0] - 2 * delta_b).abs() < 1e-5
    assert bool((kept | (diff[:, 0].abs() < 1e-5)).all()) and 0 < kept.float().mean() < 1
    torch.testing.assert_close(evaluated - bare, delta_b.expand_as(bare), rtol=0, atol=1e-5)


def test_a_non_finite_loss_stops_training_with_a_clear_error(tmp_path):
    """RePS scales the winner's log p by c·(log p_ref(l) − log p_ref(w)); a huge c overflows float32
    in the backward pass: the loop must stop at that step, before the update, naming the cause."""
    model = tiny_model("llama")
    iv = new_intervention(model, "vector", LAYER, init_scale=0.01, seed=1)
    before = iv.delta_b.detach().clone()
    with pytest.raises(train_module.NonFiniteLoss, match=r"step 1 \(epoch 1\) is not finite .*train\.lr"):
        train_intervention(
            model,
            tiny_pairs(8),
            iv,
            RePS(simpo_scaler=1e30),
            settings(),
            Accelerator(cpu=True),
            progress=False,
            log_path=tmp_path / "train_log.csv",
            checkpoint=tmp_path / "ckpt.pt",
        )
    assert torch.equal(iv.delta_b.detach(), before)  # the bad step was never applied
    assert pd.read_csv(tmp_path / "train_log.csv").empty
    assert not (tmp_path / "ckpt.pt").exists()


def test_divergence_after_an_epoch_keeps_the_last_good_checkpoint(tmp_path):
    """A run stopped (Ctrl-C) in epoch 2 leaves the checkpoint of epoch 1; resumed with an objective
    that overflows (RePS's scale), it diverges at its first step and leaves that checkpoint and the
    good log rows as they were."""
    model, pairs = tiny_model("llama"), tiny_pairs(8)  # 2 steps per epoch
    common = dict(progress=False, log_path=tmp_path / "train_log.csv", checkpoint=tmp_path / "ckpt.pt", fingerprint="f")

    def stop_in_epoch_2(row: dict) -> None:
        if row["train/step"] == 3:
            raise KeyboardInterrupt

    first = new_intervention(model, "vector", LAYER, init_scale=0.01, seed=1)
    with pytest.raises(KeyboardInterrupt):
        train_intervention(
            model, pairs, first, RePS(), settings(), Accelerator(cpu=True), log_metrics=stop_in_epoch_2, **common
        )
    saved = (tmp_path / "ckpt.pt").read_bytes()
    good_log = pd.read_csv(tmp_path / "train_log.csv")
    assert good_log["epoch"].tolist() == [1, 1]
    resumed = new_intervention(model, "vector", LAYER, init_scale=0.01, seed=1)
    with pytest.raises(
        train_module.NonFiniteLoss, match=r"step 3 \(epoch 2\).*last good checkpoint .*ckpt\.pt is kept"
    ):
        train_intervention(model, pairs, resumed, RePS(simpo_scaler=1e30), settings(), Accelerator(cpu=True), **common)
    assert (tmp_path / "ckpt.pt").read_bytes() == saved
    assert torch.isfinite(torch.load(tmp_path / "ckpt.pt", weights_only=True)["intervention"]["delta_b"]).all()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "train_log.csv"), good_log, check_exact=True)
