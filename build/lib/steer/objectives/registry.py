"""The objectives: how an intervention's Δ is obtained from the training pairs.

Each objective is one class (a frozen dataclass of its ``objective.*`` options, checked on
construction) registered in ``OBJECTIVES``; ``forms`` says which intervention forms it can
produce (None: every form). A ``Loss`` is trained by ``steer.objectives.training`` (SFT, RePS, SPLIT); an
``Estimator`` computes Δ in closed form (DiffMean). Adding an objective is one class and one
registry line (or ``OBJECTIVES[name] = MyObjective`` from outside the package).

The losses are functions of answer log-likelihoods.

Every objective sees the *directions* of a micro-batch's pairs: under +m the winner is A_p and the
loser A_n; under −m the roles swap (the trainer stacks both directions into one ``Side`` each for
winner and loser). The plain functions take tensors (per row, or one value of the micro-batch) and
return losses of the same shape; the dataclasses hold an objective's settings from config, apply
its function to the winner's and loser's ``Side`` and return the micro-batch's loss, a scalar.

* ``sft_loss``   = −log p(winner): language-model cross-entropy on the winner only.
* ``split_loss`` = λ_w·L_w + λ_l·L_l + γ·ReLU(θ − (L_l − L_w)), with L = −log p (the paper's SPLIT;
  λ_w = λ_p, λ_l = λ_n in its notation, applied to the pair as swapped for −m).
* ``reps_loss``  = −log σ(s·log p(w)/|w| − log p(l)/|l|), s = max(c·(log p_ref(l) − log p_ref(w)), 1):
  AxBench's "scaled SimPO" (β = 1, no margin), the reference being the model with the
  intervention off. As in AxBench, |·| is the length of the whole sequence (prompt + answer);
  ``length="answer"`` divides by the answer tokens instead.

SFT and SPLIT take L in one of ``REDUCTIONS`` (``objective.reduction``): ``batch_token_mean`` (the
paper's: the cross-entropy per answer token over all the micro-batch's winners, resp. losers, as
the authors' code takes ``outputs.loss`` of the minibatch, and the margin on those two means),
``example_token_mean`` (per token, per row, then the mean over rows) or ``sum`` (summed over the
answer tokens, then the mean over rows).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from steer.objectives.diffmean import diffmean_vector
from steer.pairs import PairRecord


@dataclass(frozen=True)
class Side:
    """One answer of a direction: steered log p (summed over answer tokens, differentiable), the
    reference log p with the intervention off, and its lengths."""

    logp: torch.Tensor
    ref_logp: torch.Tensor
    n_answer: torch.Tensor
    n_sequence: torch.Tensor


def sft_loss(logp_win: torch.Tensor) -> torch.Tensor:
    """−log p(winner), of the same shape."""
    return -logp_win


def split_loss(
    logp_win: torch.Tensor,
    logp_lose: torch.Tensor,
    lambda_win: float,
    lambda_lose: float,
    gamma: float,
    theta: float,
) -> torch.Tensor:
    """λ_w·L_w + λ_l·L_l + γ·ReLU(θ − (L_l − L_w)), L = −log p, of the inputs' shape. The margin
    term switches off once the winner leads by more than θ; the likelihood terms keep both answers
    fluent."""
    loss_win, loss_lose = -logp_win, -logp_lose
    return lambda_win * loss_win + lambda_lose * loss_lose + gamma * F.relu(theta - (loss_lose - loss_win))


def reps_loss(
    logp_win: torch.Tensor,
    logp_lose: torch.Tensor,
    ref_logp_win: torch.Tensor,
    ref_logp_lose: torch.Tensor,
    len_win: torch.Tensor,
    len_lose: torch.Tensor,
    simpo_scaler: float = 1.0,
) -> torch.Tensor:
    """AxBench's scaled SimPO per row. The winner's length-normalised log p is scaled by
    max(c·(log p_ref(l) − log p_ref(w)), 1): the more the unsteered model prefers the loser, the
    harder the winner is pushed."""
    scale = torch.clamp_min(simpo_scaler * (ref_logp_lose - ref_logp_win).detach(), 1.0)
    logits = scale * logp_win / len_win - logp_lose / len_lose
    return -F.logsigmoid(logits)


class Objective:
    """An objective: ``name``, the forms it can produce, and whether it is trained."""

    name: ClassVar[str]
    forms: ClassVar[tuple[str, ...] | None] = None
    trains: ClassVar[bool] = True

    @classmethod
    def check_form(cls, form: str) -> None:
        """Refuse a form this objective cannot produce, naming both config keys."""
        if cls.forms is not None and form not in cls.forms:
            raise ValueError(
                f"objective={cls.name} trains only intervention={'/'.join(cls.forms)}, not intervention={form}"
            )


class Loss(Objective):
    """A trained objective: the loss of one micro-batch of directions (winner, loser), a scalar."""

    def __call__(self, win: Side, lose: Side) -> torch.Tensor:
        raise NotImplementedError


class Estimator(Objective):
    """A closed-form objective: the intervention's tensors computed from the training pairs."""

    trains = False

    def estimate(
        self, model: nn.Module, tokenizer, records: Sequence[PairRecord], layer: int, progress: bool = False
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


# How SFT and SPLIT turn an answer's token log-probabilities into L (module docstring).
REDUCTIONS = ("batch_token_mean", "example_token_mean", "sum")


def reduced_logp(side: Side, reduction: str) -> torch.Tensor:
    """log p of ``side`` under ``reduction``: the mean per answer token over all its rows (a
    scalar), the mean per token of each row, or each row's sum."""
    if reduction == "batch_token_mean":
        return side.logp.sum() / side.n_answer.sum()
    if reduction == "example_token_mean":
        return side.logp / side.n_answer
    return side.logp


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"objective.reduction={reduction!r} is not one of {', '.join(REDUCTIONS)}")


@dataclass(frozen=True)
class SFT(Loss):
    """Cross-entropy on A_p under +m and on A_n under −m, reduced by ``reduction``."""

    name = "sft"
    reduction: str = "batch_token_mean"

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)

    def __call__(self, win: Side, lose: Side) -> torch.Tensor:
        return sft_loss(reduced_logp(win, self.reduction)).mean()


@dataclass(frozen=True)
class SPLIT(Loss):
    """The paper's objective: likelihood of both answers plus a preference margin, on L reduced by
    ``reduction`` (by default the paper's: the margin compares the micro-batch's per-token means)."""

    name = "split"
    lambda_p: float = 1.0
    lambda_n: float = 0.5
    gamma: float = 6.0
    theta: float = 0.5
    reduction: str = "batch_token_mean"

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)

    def __call__(self, win: Side, lose: Side) -> torch.Tensor:
        return split_loss(
            reduced_logp(win, self.reduction),
            reduced_logp(lose, self.reduction),
            self.lambda_p,
            self.lambda_n,
            self.gamma,
            self.theta,
        ).mean()


LENGTHS = ("sequence", "answer")


@dataclass(frozen=True)
class RePS(Loss):
    """AxBench's reference-scaled SimPO, trained in both directions."""

    name = "reps"
    simpo_scaler: float = 1.0
    length: str = "sequence"

    def __post_init__(self) -> None:
        if self.length not in LENGTHS:
            raise ValueError(f"objective.length={self.length!r} is not one of {', '.join(LENGTHS)}")

    def __call__(self, win: Side, lose: Side) -> torch.Tensor:
        n_win = win.n_sequence if self.length == "sequence" else win.n_answer
        n_lose = lose.n_sequence if self.length == "sequence" else lose.n_answer
        return reps_loss(win.logp, lose.logp, win.ref_logp, lose.ref_logp, n_win, n_lose, self.simpo_scaler).mean()


@dataclass(frozen=True)
class DiffMean(Estimator):
    """Δb = mean layer-l activation over A_p answer tokens − over A_n (``steer.objectives.diffmean``); vector only."""

    name = "diffmean"
    forms = ("vector",)
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"objective.batch_size must be a positive integer, got {self.batch_size!r}")

    def estimate(self, model, tokenizer, records, layer, progress=False):
        return {"delta_b": diffmean_vector(model, tokenizer, records, layer, self.batch_size, progress)}


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (DiffMean, SFT, RePS, SPLIT)}


def get_objective(name: str) -> type[Objective]:
    """The registered objective class ``name``; an unknown name is an error naming the choices."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective={name!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def make_objective(name: str, options: dict) -> Objective:
    """The objective ``name`` with ``options`` (the ``objective.*`` keys other than its name);
    an unknown key or a value of the wrong type is reported by name."""
    cls = get_objective(name)
    types = inspect.get_annotations(cls, eval_str=True)
    accepted = {f.name for f in fields(cls)}
    for key, value in options.items():
        if key not in accepted:
            raise ValueError(f"objective.{key} is not an option of {name} (it takes: {', '.join(sorted(accepted))})")
        if not _fits(value, types[key]):
            raise ValueError(f"objective.{key}={value!r} must be a {types[key].__name__}")
    return cls(**options)


def _fits(value, expected: type) -> bool:
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)
