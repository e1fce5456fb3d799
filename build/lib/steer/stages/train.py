"""The train stage: obtain the intervention's Δ with the configured objective and save it.

An ``Estimator`` objective (DiffMean) computes Δ in one pass; a ``Loss`` objective runs
``steer.objectives.training`` with the ``train`` settings (the form's defaults), starting from the form's
random init or (``train.init=diffmean``) from the DiffMean estimate in batches of ``train.batch_size``.
Every process of an ``accelerate launch`` runs this stage (data-parallel); only the main process writes
``train_log.csv``, the end-of-epoch checkpoint ``train_checkpoint.pt`` (resumed from after an
interruption, deleted once the stage is done) and the intervention files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from steer import rundir
from steer.core.forms import get_form
from steer.core.interventions import DynamicAffine, new_intervention
from steer.core.metrics import encode_pair
from steer.objectives import OBJECTIVES, Estimator, Loss, Objective, make_objective
from steer.objectives.training import TrainSettings, train_intervention
from steer.stages.base import Stage
from steer.stages.context import RunContext

log = logging.getLogger("steer")

# train.init of a trained objective: the form's random init, or any registered estimator's estimate.
RANDOM_INIT = "random"
# objective.* keys that are not options of the objective.
NOT_OPTIONS = ("name", "grid")
# train.factors may also be one string of factors joined by this ("2/4/8"): the
# form a tuning study's categorical choice can hold (Optuna's choices cannot be lists, and a comma
# would make the job's override a sweep).
FACTOR_SEPARATOR = "/"


def factor_list(value) -> list:
    """``train.factors`` as a list: a list as it is, a ``FACTOR_SEPARATOR``-joined string split."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(FACTOR_SEPARATOR)]
    return list(value)


def train_settings(cfg: DictConfig) -> TrainSettings:
    """``train`` as settings: the schema types every key but ``factors`` (a list or an 'a/b/c' string)."""
    train = cfg.train
    try:
        factors = tuple(float(m) for m in factor_list(train.factors))
    except (TypeError, ValueError):
        raise ValueError(f"train.factors={train.factors!r}: the factors must be numbers") from None
    return TrainSettings(
        lr=train.lr,
        epochs=train.epochs,
        batch_size=train.batch_size,
        train_factors=factors,
        grad_accum=train.grad_accum,
        weight_decay=train.weight_decay,
        grad_clip=train.grad_clip,
        dropout=train.dropout,
        directions=train.directions,
        seed=cfg.seed,
    )


def objective_from_config(cfg: DictConfig) -> Objective:
    options = OmegaConf.to_container(cfg.objective, resolve=True)
    return make_objective(cfg.objective.name, {k: v for k, v in options.items() if k not in NOT_OPTIONS})


def train_init(cfg: DictConfig) -> str:
    """``train.init`` (random unless the form has the key), checked against the form."""
    init = cfg.train.get("init", RANDOM_INIT)
    inits = [RANDOM_INIT, *(name for name, cls in OBJECTIVES.items() if issubclass(cls, Estimator))]
    if init not in inits:
        raise ValueError(f"train.init={init!r} is not one of {', '.join(inits)}")
    if init != RANDOM_INIT:
        OBJECTIVES[init].check_form(cfg.intervention.form)
    return init


def starting_estimate(cfg: DictConfig, objective: Objective) -> Estimator | None:
    """What fills Δ before training (or instead of it): the objective itself when it is an
    estimator, the estimator named by ``train.init``, else nothing (the form's random init)."""
    if isinstance(objective, Estimator):
        return objective
    init = train_init(cfg)
    if init == RANDOM_INIT:
        return None
    return OBJECTIVES[init](batch_size=cfg.train.batch_size)


def expected_intervention(cfg: DictConfig, model: nn.Module | None = None) -> dict:
    """What the run's config says ``intervention.json`` must hold (``steer.io.artifacts.verify_intervention``):
    form, layer, model, objective, rank, and with ``model`` the site's sizes."""
    form = get_form(cfg.intervention.form)
    expected = {
        "form": form.name,
        "layer": cfg.layer,
        "model": cfg.model.name,
        "objective": cfg.objective.name,
        "rank": cfg.intervention.get("rank") if form.uses_rank else None,
    }
    if model is not None:
        expected["d_in"], expected["d_out"] = form.dims(model, cfg.layer)
    return expected


class TrainStage(Stage):
    name = "train"
    keys = ("model", "precision", "layer", "intervention", "train", "objective", "seed")
    ignore = ("objective.batch_size",)
    outputs = (rundir.WEIGHTS, rundir.META)
    after = ("data",)
    reads = ("model",)
    parallel = True

    def check(self, cfg: DictConfig) -> None:
        """The form, the objective and its options, and the training settings; no model needed."""
        form = get_form(cfg.intervention.form)
        form.check(cfg.intervention.get("rank"))
        objective = objective_from_config(cfg)
        objective.check_form(form.name)
        if objective.trains:
            train_settings(cfg)
            train_init(cfg)

    def run(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        objective = objective_from_config(cfg)
        start = starting_estimate(cfg, objective)
        iv = new_intervention(
            ctx.model,
            cfg.intervention.form,
            cfg.layer,
            rank=cfg.intervention.get("rank"),
            init_scale=cfg.train.get("init_scale", 0.0) if start is None else 0.0,
            seed=cfg.seed,
            model_name=cfg.model.name,
            objective=objective.name,
        )
        if start is not None:
            estimate(ctx, iv, start)
        if isinstance(objective, Loss):
            train(ctx, iv, objective)
        if ctx.is_main:
            iv.save(ctx.run_dir)
            ctx.path(rundir.CHECKPOINT).unlink(missing_ok=True)

    def verify(self, cfg: DictConfig, run_dir: Path) -> None:
        """Both files readable, the json agreeing with the config and with the tensors."""
        DynamicAffine.load(run_dir, expected_intervention(cfg))


def estimate(ctx: RunContext, iv: DynamicAffine, estimator: Estimator) -> None:
    """Fill ``iv`` with ``estimator``'s closed-form tensors from the train split."""
    cfg = ctx.cfg
    tensors = estimator.estimate(ctx.model, ctx.tokenizer, ctx.records("train"), cfg.layer, ctx.progress)
    iv.load_tensors(tensors, source=estimator.name)
    norm = sum(float(t.double().pow(2).sum()) for t in tensors.values()) ** 0.5
    log.info("%s: |Δ| = %.3f", estimator.name, norm)
    ctx.tracker.summary({f"train/{estimator.name}_norm": norm})


def train(ctx: RunContext, iv: DynamicAffine, objective: Loss) -> None:
    """Train ``iv`` with ``objective`` on the train split; report time and memory."""
    from accelerate import Accelerator

    cfg = ctx.cfg
    pairs = [encode_pair(ctx.tokenizer, r.prompt_text, r.positive, r.negative) for r in ctx.records("train")]
    accelerator = Accelerator(cpu=ctx.device == "cpu")
    report = train_intervention(
        ctx.model,
        pairs,
        iv,
        objective,
        train_settings(cfg),
        accelerator,
        progress=ctx.progress,
        log_metrics=ctx.tracker.log,
        log_path=ctx.path(rundir.TRAIN_LOG),
        checkpoint=ctx.path(rundir.CHECKPOINT),
        fingerprint=ctx.fingerprint or "",
    )
    final = report.log[-1]["loss"] if report.log else float("nan")
    log.info(
        "train: %s %s on %d pairs x %d process(es): final loss %.4f; %s",
        cfg.intervention.form,
        objective.name,
        len(pairs),
        accelerator.num_processes,
        final,
        report.summary(),
    )
    summary = {"steps": len(report.log), "final_loss": final, "processes": accelerator.num_processes}
    summary.update(report.measurements())
    iv.info.extra["training"] = summary  # recorded in intervention.json
    ctx.tracker.summary({f"train/{k}": v for k, v in summary.items() if k != "memory_kind"})
