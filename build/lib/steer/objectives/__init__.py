"""Objectives: the registry of losses and estimators (``registry``), the DiffMean estimate
(``diffmean``) and the training loop (``training``). A new objective is one class in ``registry``
and its line in ``OBJECTIVES``."""

from steer.objectives.registry import (
    LENGTHS,
    OBJECTIVES,
    REDUCTIONS,
    SFT,
    SPLIT,
    DiffMean,
    Estimator,
    Loss,
    Objective,
    RePS,
    Side,
    get_objective,
    make_objective,
    reps_loss,
    sft_loss,
    split_loss,
)

__all__ = [
    "LENGTHS",
    "OBJECTIVES",
    "REDUCTIONS",
    "SFT",
    "SPLIT",
    "DiffMean",
    "Estimator",
    "Loss",
    "Objective",
    "RePS",
    "Side",
    "get_objective",
    "make_objective",
    "reps_loss",
    "sft_loss",
    "split_loss",
]
