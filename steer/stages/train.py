"""The train stage: fit the intervention's Δ with the configured objective and save it."""

from __future__ import annotations

import logging

import torch

from steer.diffmean import diffmean_vector
from steer.interventions import new_intervention
from steer.stages.context import RunContext
from steer.stages.runner import Stage

log = logging.getLogger("steer")


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    iv = new_intervention(
        ctx.model,
        cfg.intervention.form,
        cfg.layer,
        rank=cfg.intervention.rank,
        seed=cfg.seed,
        model_name=cfg.model.name,
        objective=cfg.objective.name,
    )
    if cfg.objective.name == "diffmean":
        vector = diffmean_vector(
            ctx.model, ctx.tokenizer, ctx.records("train"), cfg.layer, cfg.objective.batch_size, cfg.progress
        )
        with torch.no_grad():
            iv.delta_b.copy_(vector)
        log.info("diffmean: |Δb| = %.3f", vector.norm().item())
        ctx.tracker.summary({"train/delta_b_norm": vector.norm().item()})
    else:
        raise ValueError(f"objective={cfg.objective.name!r} has no training loop")
    iv.save(ctx.run_dir)


STAGE = Stage(
    name="train",
    run=run,
    keys=("model", "layer", "intervention", "objective", "seed"),
    ignore=("intervention.grid", "objective.grid", "objective.batch_size"),
    outputs=("intervention.safetensors", "intervention.json"),
    after=("data",),
)
