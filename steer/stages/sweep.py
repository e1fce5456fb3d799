"""The sweep stage: PrefOdds/UtilOdds of every pair at every m of ``sweep.grid``."""

from __future__ import annotations

import logging

from steer.atomic import atomic_path
from steer.interventions import DynamicAffine
from steer.stages.context import RunContext
from steer.stages.runner import Stage
from steer.sweep import summarize, sweep

log = logging.getLogger("steer")

SWEEP_FILE = "sweep.parquet"


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    iv = DynamicAffine.load(ctx.run_dir)
    grid = [float(m) for m in cfg.sweep.grid]
    frame = sweep(
        ctx.model,
        ctx.tokenizer,
        ctx.records(),
        iv,
        grid,
        batch_size=cfg.sweep.batch_size,
        per_token=cfg.sweep.per_token,
        progress=cfg.progress,
    )
    with atomic_path(ctx.path(SWEEP_FILE)) as tmp:
        frame.to_parquet(tmp, index=False)
    table = summarize(frame)
    for m, row in table.iterrows():
        ctx.tracker.log({"sweep/m": m, **{f"sweep/{k}": v for k, v in row.items()}})
    ctx.tracker.table("sweep/mean_by_m", table.reset_index())


STAGE = Stage(
    name="sweep",
    run=run,
    keys=("sweep",),
    ignore=("sweep.batch_size",),
    outputs=(SWEEP_FILE,),
    after=("train",),
)
