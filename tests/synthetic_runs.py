"""Hand-made run directories (config.yaml, sweep.parquet, fit.json) for report tests: no model needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from steer.analysis.fit import NEUTRAL_DECAY, PARAMS, curve

VECTOR_GRID = [-20, -16, -12, -8, -6, -4, -2, -1, 0, 1, 2, 4, 6, 8, 12, 16, 20]
WEIGHT_GRID = [-2.0, -1.6, -1.2, -0.8, -0.6, -0.4, -0.2, -0.1, 0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.2, 1.6, 2.0]
DECAY = {"m_pos": 0.0, "m_neg": 0.0, "p_pos": 1.5, "p_neg": 1.0}


def write_config(
    run_dir: Path,
    model="smollm2-135m",
    layer=15,
    form="vector",
    objective="diffmean",
    dataset="sentiment",
    loader="sentiment",
) -> None:
    config = {
        "model": {"name": model, "layer": layer},
        "layer": layer,
        "intervention": {"form": form},
        "objective": {"name": objective},
        "dataset": {"name": dataset, "loader": loader},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def write_fit(run_dir: Path, r2: dict) -> None:
    """fit.json with the given R² per (kind, which) and a constant curve's parameters."""
    constant = {"alpha": 0.0, "beta": 0.0, "b": 0.0, **NEUTRAL_DECAY}
    fit = {
        kind: {which: {"r2": r2.get((kind, which))} for which in ("train", "test", "transfer")}
        for kind in ("pref", "util")
    }
    for kind, entry in fit.items():
        for which in ("train", "test"):
            entry[which]["params"] = {k: constant[k] for k in PARAMS[kind]}
    (run_dir / "fit.json").write_text(json.dumps(fit))


def write_sweep(run_dir: Path, grid, scale: float, n: int = 6, seed: int = 0) -> pd.DataFrame:
    """sweep.parquet whose examples scatter around the validity-decay model (width ∝ ``scale``)."""
    rng = np.random.default_rng(seed)
    m = np.asarray(grid, dtype=float)
    width = scale**2
    pref = curve("pref", m, {"alpha": 2.0 / scale, "beta": 1.0, "b": 0.5, "L_pos": width, "L_neg": width, **DECAY})
    util = curve("util", m, {"beta": 4.0, "b": -6.0, "L_pos": 2 * width, "L_neg": width, **DECAY})
    rows = []
    for split in ("train", "test"):
        for i in range(n):
            shift = rng.normal(0, 0.5)
            for k, mk in enumerate(m):
                p = pref[k] + shift + rng.normal(0, 0.05)
                u = util[k] - abs(shift) + rng.normal(0, 0.05)
                rows.append(
                    {
                        "split": split,
                        "example_id": f"{split}-{i}",
                        "m": mk,
                        "loss_pos": np.nan,
                        "loss_neg": np.nan,
                        "pref_odds": p,
                        "util_odds": u,
                    }
                )
    frame = pd.DataFrame(rows)
    frame.to_parquet(run_dir / "sweep.parquet", index=False)
    return frame


def markdown_rows(text: str) -> list[list[str]]:
    """The rows (headers included, rules left out) of the Markdown tables in a report, cells stripped:
    what a reader sees, whatever the column padding."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not set(line) <= set("|:- ")
    ]
