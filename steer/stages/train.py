"""The train stage: fit the intervention's Δ with the configured objective and save it.

``diffmean`` computes its vector in one pass; ``sft``/``reps``/``split`` run ``steer.train`` with the
form's ``intervention.train`` settings. Every process of an ``accelerate launch`` runs this stage
(data-parallel); only the main process writes ``train_log.csv``, the end-of-epoch checkpoint
``train_checkpoint.pt`` (resumed from after an interruption, deleted once the stage is done) and
the intervention files.
"""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf

from steer.diffmean import diffmean_vector
from steer.interventions import new_intervention
from steer.metrics import encode_pair
from steer.objectives import Objective, make_objective
from steer.stages.context import RunContext
from steer.stages.data import STAGE as DATA_STAGE
from steer.stages.runner import Stage, fingerprint
from steer.train import TrainSettings, train_intervention

log = logging.getLogger("steer")

LOG_FILE = "train_log.csv"
CHECKPOINT_FILE = "train_checkpoint.pt"
VECTOR_INITS = ("random", "diffmean")
# objective.* keys that are not options of the loss.
NOT_LOSS_OPTIONS = ("name", "grid")


def train_settings(cfg: DictConfig) -> TrainSettings:
    """``intervention.train`` as checked settings (a bad value raises, naming its key)."""
    train = cfg.intervention.train
    return TrainSettings(
        lr=float(train.lr),
        epochs=train.epochs,
        batch_size=train.batch_size,
        train_factors=tuple(float(m) for m in train.train_factors),
        grad_accum=train.grad_accum,
        weight_decay=float(train.weight_decay),
        grad_clip=float(train.grad_clip),
        seed=cfg.seed,
    )


def objective_from_config(cfg: DictConfig) -> Objective:
    options = OmegaConf.to_container(cfg.objective, resolve=True)
    return make_objective(cfg.objective.name, {k: v for k, v in options.items() if k not in NOT_LOSS_OPTIONS})


def vector_init(cfg: DictConfig) -> str:
    init = cfg.intervention.train.get("init", "random")
    if init not in VECTOR_INITS:
        raise ValueError(f"intervention.train.init={init!r} is not one of {', '.join(VECTOR_INITS)}")
    return init


def check(cfg: DictConfig) -> None:
    """Everything about training that can be checked before the model loads."""
    if cfg.objective.name == "diffmean":
        return
    train_settings(cfg)
    objective_from_config(cfg)
    if cfg.intervention.form == "vector":
        vector_init(cfg)


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    form, objective_name = cfg.intervention.form, cfg.objective.name
    trained = objective_name != "diffmean"
    init = vector_init(cfg) if trained and form == "vector" else None
    iv = new_intervention(
        ctx.model,
        form,
        cfg.layer,
        rank=cfg.intervention.rank,
        init_scale=float(cfg.intervention.train.init_scale) if init == "random" else 0.0,
        seed=cfg.seed,
        model_name=cfg.model.name,
        objective=objective_name,
    )
    if objective_name == "diffmean" or init == "diffmean":
        batch_size = cfg.objective.get("batch_size", cfg.sweep.batch_size)
        vector = diffmean_vector(ctx.model, ctx.tokenizer, ctx.records("train"), cfg.layer, batch_size, cfg.progress)
        with torch.no_grad():
            iv.delta_b.copy_(vector)
        log.info("diffmean: |Δb| = %.3f", vector.norm().item())
        ctx.tracker.summary({"train/diffmean_norm": vector.norm().item()})
    if trained:
        fit(ctx, iv)
    if ctx.is_main:
        iv.save(ctx.run_dir)
        ctx.path(CHECKPOINT_FILE).unlink(missing_ok=True)


def fit(ctx: RunContext, iv) -> None:
    """Train ``iv`` with the configured objective on the train split; report time and memory."""
    from accelerate import Accelerator

    cfg = ctx.cfg
    pairs = [encode_pair(ctx.tokenizer, r.prompt_text, r.positive, r.negative) for r in ctx.records("train")]
    accelerator = Accelerator(cpu=ctx.device == "cpu")
    report = train_intervention(
        ctx.model,
        pairs,
        iv,
        objective_from_config(cfg),
        train_settings(cfg),
        accelerator,
        progress=cfg.progress,
        log_metrics=ctx.tracker.log,
        log_path=ctx.path(LOG_FILE),
        checkpoint=ctx.path(CHECKPOINT_FILE),
        fingerprint=fingerprint(STAGE, cfg, (DATA_STAGE, STAGE)),
    )
    final = report.log[-1]["loss"] if report.log else float("nan")
    log.info(
        "train: %s %s on %d pairs x %d process(es): final loss %.4f; %s",
        cfg.intervention.form,
        cfg.objective.name,
        len(pairs),
        accelerator.num_processes,
        final,
        report.summary(),
    )
    summary = {
        "steps": len(report.log),
        "final_loss": final,
        "processes": accelerator.num_processes,
        "seconds_per_step": round(report.seconds_per_step, 4),
        "prefix_seconds": round(report.prefix_seconds, 3),
        "peak_memory_mib": round(report.peak_memory_mib, 1),
        "memory_kind": report.memory_kind,
    }
    iv.info.extra["training"] = summary  # recorded in intervention.json
    ctx.tracker.summary({f"train/{k}": v for k, v in summary.items() if k != "memory_kind"})


STAGE = Stage(
    name="train",
    run=run,
    keys=("model", "precision", "layer", "intervention", "objective", "seed"),
    ignore=("intervention.grid", "objective.grid", "objective.batch_size"),
    outputs=("intervention.safetensors", "intervention.json"),
    after=("data",),
    parallel=True,
)
