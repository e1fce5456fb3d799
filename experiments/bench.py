"""Benchmark the sweep engine against the straightforward way of computing the same numbers.

Baseline: for every m and every answer, one padded forward of prompt + answer through the whole
model with full-vocabulary logits (how most steering code scores answers). Engine: steer.sweep
(packed prompt + both answers, prefix reuse below the steered layer, answer-only logits).
Both run on the same pairs, grid and intervention; the script checks they agree and prints the
speed ratio. Results go to outputs/bench/sweep.json.

    make bench                       # defaults: 32 sentiment pairs, 13-point grid, layer 15
    python experiments/bench.py --pairs 64 --grid 21 --layer 10
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from steer.atomic import atomic_write_text
from steer.data import to_records
from steer.datasets import sentiment
from steer.interventions import new_intervention
from steer.metrics import collate, encode, encode_pair
from steer.models import EMBEDDED_SOURCE, load_model
from steer.sweep import grid_losses, length_batches


def baseline_losses(model, tok, records, intervention, grid, batch_size) -> np.ndarray:
    """[len(grid), len(records), 2] with full forwards and full logits, one answer at a time."""
    encoded = [encode(tok, r.prompt_text, a) for r in records for a in (r.positive, r.negative)]
    out = np.empty((len(grid), len(encoded)))
    with torch.inference_mode(), intervention.attached(model):
        for k, m in enumerate(grid):
            intervention.set_multiplier(m)
            for batch in length_batches(encoded, batch_size):
                ids, mask = collate([encoded[i] for i in batch], "cpu")
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
                for row, i in enumerate(batch):
                    e = encoded[i]
                    t = torch.arange(e.n_prompt, len(e.ids))
                    out[k, i] = -logp[row, t - 1, torch.tensor(e.ids)[t]].sum().item()
    return out.reshape(len(grid), len(records), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--grid", type=int, default=13, help="number of multipliers, evenly spaced in [-4, 4]")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="outputs/bench/sweep.json")
    args = parser.parse_args()

    model, tok = load_model(EMBEDDED_SOURCE)
    records = to_records(tok, sentiment.load())[: args.pairs]
    grid = [float(m) for m in np.linspace(-4, 4, args.grid)]
    iv = new_intervention(model, "vector", args.layer, init_scale=0.5, seed=0)
    pairs = [encode_pair(tok, r.prompt_text, r.positive, r.negative) for r in records]
    tokens = sum(len(p) for p in pairs)

    start = time.perf_counter()
    engine = grid_losses(model, pairs, iv, grid, args.batch_size, progress=False)
    engine_s = time.perf_counter() - start
    start = time.perf_counter()
    baseline = baseline_losses(model, tok, records, iv, grid, args.batch_size)
    baseline_s = time.perf_counter() - start

    result = {
        "pairs": len(records),
        "grid_points": len(grid),
        "layer": args.layer,
        "mean_tokens_per_pair": tokens / len(pairs),
        "engine_seconds": round(engine_s, 2),
        "baseline_seconds": round(baseline_s, 2),
        "speedup": round(baseline_s / engine_s, 2),
        "engine_pair_m_per_second": round(len(records) * len(grid) / engine_s, 1),
        "baseline_pair_m_per_second": round(len(records) * len(grid) / baseline_s, 1),
        "max_abs_loss_difference": float(np.abs(engine - baseline).max()),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
