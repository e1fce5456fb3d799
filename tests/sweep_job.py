"""A real sweep of the embedded model, resumable, as its own process (so a test can SIGKILL it).

    python -m tests.sweep_job PARTS_DIR OUT.parquet     # resumable: logs "sweep: computed C of N batches"
    python -m tests.sweep_job none OUT.parquet          # the plain, uninterrupted sweep

Same pairs, intervention and grid on every call.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

GRID = [-8.0, -2.0, 0.0, 2.0, 8.0]


def records(tokenizer):
    from steer.datasets import sentiment
    from steer.pairs import to_records

    return to_records(tokenizer, sentiment.load(n_train=12, n_test=4, seed=0))


def intervention(model):
    from steer.core.interventions import new_intervention

    return new_intervention(model, "vector", 15, init_scale=0.5, seed=7)


def main(parts_dir: str, out: str) -> None:
    from steer.core.models import EMBEDDED_SOURCE, load_model
    from steer.core.sweep import sweep
    from steer.io.atomic import atomic_path

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    model, tokenizer = load_model(EMBEDDED_SOURCE)
    frame = sweep(
        model,
        tokenizer,
        records(tokenizer),
        intervention(model),
        GRID,
        batch_size=2,
        progress=False,
        parts_dir=None if parts_dir == "none" else Path(parts_dir),
        key="sweep-job",
    )
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
