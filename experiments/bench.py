"""Benchmark the sweep engine and steered generation against the straightforward ways of computing
the same numbers.

Sweep baseline: for every m and every answer, one padded forward of prompt + answer through the
whole model with full-vocabulary logits (how most steering code scores answers). Engine:
steer.core.sweep (packed prompt + both answers, prefix reuse below the steered layer, answer-only logits).

Generation baseline: ``model.generate`` (greedy, KV cache) with the intervention's hook at one m
at a time over the prompts. Engine: steer.core.generate.generate (every (prompt, m) a row of one
batch, rows leave the batch at EOS). Greedy, so both must produce the same tokens.

Both rows run on the same pairs, grid and intervention; the script checks they agree and prints
the speed ratios. Results go to outputs/bench/sweep.json, train.json and generate.json.

Distance to the floor (sweep and train rows): the matmul FLOPs the computation needs, counted from
the model's shapes (``steer.runtime.plan``: ``sweep_flops``, ``train_step_flops``: 2·weights per
token per layer, the attention matmuls per attended position, answer-only logits; a training step
is the forward from the steered layer plus the backward of the activations, the base frozen),
divided by this machine's torch.matmul rate measured in the same run at the model's
[tokens × hidden] × [hidden × intermediate] shape. floor_ratio = measured seconds / that floor.

    make bench                       # defaults: 32 pairs x 13-point grid; 4 prompts x 3 m x 32 tokens
    python experiments/bench.py --pairs 64 --grid 21 --layer 10 --rows sweep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from steer.core.batching import length_batches
from steer.core.decode import left_pad
from steer.core.generate import generate, stop_ids
from steer.core.interventions import new_intervention
from steer.core.metrics import collate, encode, encode_pair
from steer.core.models import EMBEDDED_SOURCE, load_model, num_layers
from steer.core.sweep import grid_losses
from steer.datasets import sentiment
from steer.io.atomic import atomic_write_text
from steer.objectives import SPLIT
from steer.objectives.training import TrainSettings, train_intervention
from steer.pairs import to_records
from steer.runtime.plan import PairTokens, forward_shape, matmul_rate, sweep_flops, train_step_flops


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


def timed(fn, *args):
    """(fn(*args), wall seconds, CPU seconds of this process). On a shared machine the CPU seconds
    say more about the work than the wall clock does."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def baseline_generate(model, tok, prompts, intervention, multipliers, max_new_tokens) -> dict:
    """{(prompt index, m): new token ids up to the first stop}: ``model.generate``, one m at a time."""
    from transformers import GenerationConfig

    stops = stop_ids(model, tok)
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tok.pad_token_id
    )
    ids, mask = left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in prompts], tok.pad_token_id, "cpu")
    out = {}
    with torch.inference_mode(), intervention.attached(model):
        for m in multipliers:
            intervention.set_multiplier(m)
            new = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1] :]
            for i, row in enumerate(new.tolist()):
                out[i, m] = tuple(row[: next((k for k, t in enumerate(row) if t in stops), len(row))])
    return out


def bench_generation(model, tok, records, args) -> dict:
    """Steered greedy generation at several m: the batched engine against model.generate per m."""
    prompts = [r.prompt_text for r in records[: args.gen_prompts]]
    multipliers = [float(m) for m in args.gen_multipliers.split(",")]
    iv = new_intervention(model, "vector", args.layer, init_scale=0.5, seed=0)
    kw = dict(intervention=iv, multipliers=multipliers, max_new_tokens=args.gen_tokens, progress=False)
    generate(model, tok, prompts[:1], **{**kw, "max_new_tokens": 2})  # warm-up: first-call overheads
    found, engine_s, engine_cpu = timed(
        lambda: generate(model, tok, prompts, batch_size=len(prompts) * len(multipliers), **kw)
    )
    baseline, baseline_s, baseline_cpu = timed(baseline_generate, model, tok, prompts, iv, multipliers, args.gen_tokens)
    engine = {(g.prompt_index, g.m): g.token_ids for g in found}
    differ = [key for key in engine if engine[key] != baseline[key]]
    if differ:
        raise AssertionError(f"generation: engine and model.generate disagree on (prompt, m) {differ}")
    tokens = sum(g.n_tokens for g in found)
    return {
        "prompts": len(prompts),
        "multipliers": multipliers,
        "max_new_tokens": args.gen_tokens,
        "layer": args.layer,
        "new_tokens": tokens,
        "rows_stopped_by_eos": sum(g.stopped_by_eos for g in found),
        "engine_seconds": round(engine_s, 2),
        "baseline_seconds": round(baseline_s, 2),
        "speedup": round(baseline_s / engine_s, 2),
        "engine_cpu_seconds": round(engine_cpu, 2),
        "baseline_cpu_seconds": round(baseline_cpu, 2),
        "cpu_speedup": round(baseline_cpu / engine_cpu, 2),
        "engine_new_tokens_per_second": round(tokens / engine_s, 1),
        "baseline_new_tokens_per_second": round(tokens / baseline_s, 1),
        "engine_new_tokens_per_cpu_second": round(tokens / engine_cpu, 1),
        "baseline_new_tokens_per_cpu_second": round(tokens / baseline_cpu, 1),
        "same_tokens": True,
    }


def bench_sweep(model, tok, records, args) -> dict:
    """Losses over a multiplier grid: the sweep engine against full forwards per m and answer."""
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

    flops = sweep_flops(forward_shape(model), [tokens_of(p) for p in pairs], len(grid), args.layer)
    return {
        "pairs": len(records),
        "grid_points": len(grid),
        "layer": args.layer,
        "mean_tokens_per_pair": tokens / len(pairs),
        **floor(flops, engine_s, args.matmul_flops),
        "engine_seconds": round(engine_s, 2),
        "baseline_seconds": round(baseline_s, 2),
        "speedup": round(baseline_s / engine_s, 2),
        "engine_pair_m_per_second": round(len(records) * len(grid) / engine_s, 1),
        "baseline_pair_m_per_second": round(len(records) * len(grid) / baseline_s, 1),
        "max_abs_loss_difference": float(np.abs(engine - baseline).max()),
    }


def tokens_of(pair) -> PairTokens:
    return PairTokens(len(pair.prompt), len(pair.positive), len(pair.negative))


def floor(flops: float, seconds: float, rate: float) -> dict:
    """The FLOPs, the seconds they take at the measured matmul rate, and how far the run is from it."""
    return {
        "gflops": round(flops / 1e9, 2),
        "floor_seconds": round(flops / rate, 3),
        "floor_ratio": round(seconds / (flops / rate), 2),
        "achieved_gflop_per_second": round(flops / seconds / 1e9, 1),
    }


def bench_train(model, tok, records, args) -> dict:
    """One epoch of SPLIT training of a vector (the loop of steer.objectives.training): seconds per
    step against the FLOPs of a step."""
    from accelerate import Accelerator

    pairs = [encode_pair(tok, r.prompt_text, r.positive, r.negative) for r in records]
    iv = new_intervention(model, "vector", args.layer, init_scale=0.01, seed=0)
    settings = TrainSettings(lr=0.05, epochs=1, batch_size=args.train_batch, train_factors=(2.0, 4.0), seed=0)
    report = train_intervention(model, pairs, iv, SPLIT(), settings, Accelerator(cpu=True), progress=False)
    per_step = train_step_flops(forward_shape(model), [tokens_of(p) for p in pairs], args.layer) / report.steps
    rows = 2 * sum(len(p.prompt) + len(p.positive) + len(p.negative) for p in pairs) / report.steps
    return {
        "pairs": len(pairs),
        "batch_pairs": args.train_batch,
        "steps": report.steps,
        "layer": args.layer,
        **floor(per_step, report.seconds_per_step, args.matmul_flops),
        "seconds_per_step": round(report.seconds_per_step, 3),
        "prefix_cache_seconds": round(report.prefix_seconds, 2),
        "tokens_per_second": round(rows / report.seconds_per_step, 1),
    }


@contextlib.contextmanager
def profiled(path: Path, enabled: bool) -> Iterator[None]:
    """With ``enabled``, the row under torch.profiler: its operators by self CPU time go to ``path``
    (the breakdown of docs/development.md). The profiler slows the row; its timings are not the bench's."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        yield
    path.parent.mkdir(parents=True, exist_ok=True)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    atomic_write_text(path, table + "\n")
    print(f"profile -> {path}")


ROWS = {"sweep": bench_sweep, "train": bench_train, "generate": bench_generation}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--grid", type=int, default=13, help="number of multipliers, evenly spaced in [-4, 4]")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gen-prompts", type=int, default=4, help="prompts of the generation row")
    parser.add_argument("--gen-multipliers", default="-4,0,4", help="comma-separated m of the generation row")
    parser.add_argument("--gen-tokens", type=int, default=32, help="max new tokens of the generation row")
    parser.add_argument("--train-batch", type=int, default=8, help="pairs per training step of the train row")
    parser.add_argument("--rows", default="sweep,train,generate", help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--out-dir", default="outputs/bench", help="<row>.json is written here")
    parser.add_argument("--profile", action="store_true", help="torch.profiler per row -> <row>-profile.txt")
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    for name in ("pairs", "grid", "batch_size", "gen_prompts", "gen_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    try:
        [float(m) for m in args.gen_multipliers.split(",")]
    except ValueError:
        parser.error(f"--gen-multipliers: not a comma-separated list of numbers: {args.gen_multipliers!r}")

    model, tok = load_model(EMBEDDED_SOURCE)
    layers = num_layers(model.config)
    if not 0 <= args.layer < layers:
        parser.error(f"--layer {args.layer} is out of range: the embedded model has layers 0..{layers - 1}")
    records = to_records(tok, sentiment.load())[: args.pairs]
    rows_tokens = args.batch_size * int(
        np.mean([len(p) for p in (encode_pair(tok, r.prompt_text, r.positive, r.negative) for r in records)])
    )
    shape = (rows_tokens, model.config.hidden_size, model.config.intermediate_size)
    args.matmul_flops = matmul_rate(*shape)
    print(f"matmul rate at {shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]} (fp32): {args.matmul_flops / 1e9:.1f} GFLOP/s")
    machine = {
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "matmul_shape": list(shape),
        "matmul_gflop_per_second": round(args.matmul_flops / 1e9, 1),
    }
    for row in rows:
        with profiled(Path(args.out_dir) / f"{row}-profile.txt", args.profile):
            result = {**ROWS[row](model, tok, records, args), **machine}
        path = Path(args.out_dir) / f"{row}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        width = max(len(k) for k in result)
        print(f"[{row}] -> {path}")
        for key, value in result.items():
            print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
