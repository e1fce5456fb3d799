"""One command for the day a GPU is at hand: every stage of steer on it, timed, in bf16 and fp32.

    make gpu-check                               # = python experiments/gpu_check.py
    python experiments/gpu_check.py --reduced    # the CPU path's sizes (what the test suite runs)

On one CUDA device, on the embedded SmolLM2-135M and the built-in sentiment pairs, for fp32 then
bf16: train (a vector, SPLIT), sweep, fit, generate (batch 1, and 64 prompts × 3 multipliers in one
batch) and judge (``transformers serve`` with continuous batching, the fluency rubric, judging the
64×3 answers). Then:

- bf16 against fp32, both scoring the *fp32-trained* Δ: the sweep's losses (tolerance
  ``LOSS_RTOL`` on the median relative difference, ``MEAN_RTOL`` on the mean curve) and greedy
  text (tolerance: at least ``TEXT_AGREEMENT`` of the (prompt, m) rows with the same first
  ``TEXT_TOKENS`` tokens; bf16 rounding legitimately flips near-tied greedy choices);
- throughput of the sweep and of training in tokens/s and as a fraction of the device's bf16 peak
  (``PEAKS`` by device name; else a measured bf16 matmul rate), FLOPs counted from the model's
  shapes (``steer.runtime.plan``); generation tokens/s; peak memory per stage;
- a 2-job multirun (``hydra/launcher=node node.jobs=2``) sharing the device.

Writes one JSON (``--out``) and prints one table. Without CUDA it says so, runs the CPU path in a
reduced size and exits 0. Budget on a GPU: well under 8 minutes (the multirun dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from steer.analysis.fit import fit_sweep  # noqa: E402
from steer.core.generate import generate  # noqa: E402
from steer.core.interventions import new_intervention  # noqa: E402
from steer.core.metrics import encode_pair  # noqa: E402
from steer.core.models import EMBEDDED_SOURCE, load_model, resolve_source  # noqa: E402
from steer.core.sweep import sweep  # noqa: E402
from steer.datasets import sentiment  # noqa: E402
from steer.io.atomic import atomic_write_text  # noqa: E402
from steer.objectives import SPLIT  # noqa: E402
from steer.objectives.training import TrainSettings, train_intervention  # noqa: E402
from steer.pairs import to_records  # noqa: E402
from steer.runtime.plan import PairTokens, forward_shape, matmul_rate, sweep_flops, train_step_flops  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) by a substring of torch.cuda.get_device_name();
# the first match wins, so the PCIe H100 comes before the SXM one.
PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165e12),
    ("L4", 121e12),
    ("A10", 125e12),
)
LOSS_RTOL = 0.05  # median over (pair, m) of |L_bf16 - L_fp32| / |L_fp32|
MEAN_RTOL = 0.03  # max over m of the relative difference of the mean loss curves
TEXT_TOKENS = 16
TEXT_AGREEMENT = 0.5  # share of greedy rows with identical first TEXT_TOKENS tokens
MULTIPLIERS = (-4.0, 0.0, 4.0)
LAYER = 15


@dataclass(frozen=True)
class Size:
    """How much work each stage does."""

    train_pairs: int
    epochs: int
    batch: int
    grid: int
    prompts: int
    new_tokens: int
    judge_answers: int
    judge_tokens: int


FULL = Size(train_pairs=120, epochs=2, batch=16, grid=13, prompts=64, new_tokens=64, judge_answers=192, judge_tokens=48)
REDUCED = Size(train_pairs=4, epochs=1, batch=4, grid=9, prompts=4, new_tokens=4, judge_answers=2, judge_tokens=4)


def peak_flops(device: str) -> tuple[float, str]:
    """The device's dense bf16 peak and where it came from (the table, or a measured matmul rate)."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for key, peak in PEAKS:
            if key in name:
                return peak, f"{name}: table ({key})"
        measured = matmul_rate(8192, 8192, 8192, "bfloat16", device)
        return measured, f"{name}: measured bf16 matmul 8192³"
    # Most CPUs run bf16 matmuls slower than fp32 ones: the faster of the two is the CPU's peak.
    measured = max(matmul_rate(2048, 576, 1536, dtype, "cpu") for dtype in ("bfloat16", "float32"))
    return measured, f"{platform.processor() or platform.machine()}: measured matmul 2048x576 @ 576x1536 (CPU)"


class Stage:
    """Time a stage and its peak memory (CUDA: allocated since the stage began; CPU: process max RSS)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.memory_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            import resource

            self.memory_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.seconds = time.perf_counter() - self.start


def tokens_of(pair) -> PairTokens:
    return PairTokens(len(pair.prompt), len(pair.positive), len(pair.negative))


def run_precision(precision: str, device: str, size: Size, records, fp32_delta, peak: float) -> dict:
    """Every stage in one precision; the sweep and the generations also score ``fp32_delta`` (the
    fp32-trained tensors) so the precisions can be compared on the same Δ."""
    from accelerate import Accelerator

    dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    model, tok = load_model(EMBEDDED_SOURCE, dtype=dtype, device=device)
    shape = forward_shape(model)
    train = [r for r in records if r.split == "train"][: size.train_pairs]
    encoded = [encode_pair(tok, r.prompt_text, r.positive, r.negative) for r in train]
    out: dict = {"stages": {}}

    iv = new_intervention(model, "vector", LAYER, init_scale=0.01, seed=0)
    settings = TrainSettings(lr=0.08, epochs=size.epochs, batch_size=size.batch, train_factors=(2.0, 4.0), seed=0)
    accelerator = Accelerator(cpu=not device.startswith("cuda"))
    with Stage(device) as st:
        report = train_intervention(model, encoded, iv, SPLIT(), settings, accelerator, progress=False)
    loop_seconds = report.seconds_per_step * report.steps
    flops = size.epochs * train_step_flops(shape, [tokens_of(p) for p in encoded], LAYER)
    tokens = size.epochs * 2 * sum(p.width for p in encoded)
    out["stages"]["train"] = stage_row(st, loop_seconds, tokens, flops, peak)
    out["delta"] = {k: v.tolist() for k, v in iv.tensors().items()}

    scored = new_intervention(model, "vector", LAYER, seed=0)
    scored.load_tensors({k: torch.tensor(v) for k, v in (fp32_delta or out["delta"]).items()})
    grid = [float(m) for m in np.linspace(-8, 8, size.grid)]
    pairs = [encode_pair(tok, r.prompt_text, r.positive, r.negative) for r in records]
    with Stage(device) as st:
        frame = sweep(model, tok, records, scored, grid, batch_size=size.batch, progress=False)
    flops = sweep_flops(shape, [tokens_of(p) for p in pairs], len(grid), LAYER)
    out["stages"]["sweep"] = stage_row(st, st.seconds, len(grid) * sum(p.width for p in pairs), flops, peak)
    out["losses"] = frame[["loss_pos", "loss_neg"]].to_numpy().tolist()
    out["mean_curve"] = frame.groupby("m")["loss_pos"].mean().tolist()

    with Stage(device) as st:
        fitted = fit_sweep(frame, restarts=4, seed=0)
    out["stages"]["fit"] = {"seconds": round(st.seconds, 3), "peak_mib": round(st.memory_mib, 1)}
    out["fit_r2_train_pref"] = fitted.fits[("pref", "train")].r2 if ("pref", "train") in fitted.fits else None

    prompts = [r.prompt_text for r in records][: size.prompts]
    common = dict(intervention=scored, max_new_tokens=size.new_tokens, progress=False)
    generate(model, tok, prompts[:1], multipliers=[0.0], **{**common, "max_new_tokens": 2})  # warm-up
    with Stage(device) as st:
        single = generate(model, tok, prompts[:1], multipliers=[MULTIPLIERS[-1]], batch_size=1, **common)
    out["stages"]["generate b1"] = gen_row(st, single)
    with Stage(device) as st:
        found = generate(model, tok, prompts, multipliers=list(MULTIPLIERS), batch_size=len(prompts) * 3, **common)
    out["stages"][f"generate {len(prompts)}x3"] = gen_row(st, found)
    out["generations"] = [
        {"prompt": g.prompt_index, "m": g.m, "tokens": list(g.token_ids), "text": g.text} for g in found
    ]
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def stage_row(st: Stage, seconds: float, tokens: int, flops: float, peak: float) -> dict:
    return {
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1),
        "tflop_per_second": round(flops / seconds / 1e12, 4),
        "fraction_of_peak": round(flops / seconds / peak, 5),
        "peak_mib": round(st.memory_mib, 1),
    }


def gen_row(st: Stage, found) -> dict:
    tokens = sum(g.n_tokens for g in found)
    return {
        "seconds": round(st.seconds, 3),
        "rows": len(found),
        "new_tokens": tokens,
        "tokens_per_second": round(tokens / st.seconds, 1),
        "peak_mib": round(st.memory_mib, 1),
    }


def judge(answers: list[str], precision: str, device: str, size: Size, work: Path) -> dict:
    """Judge ``answers`` (fluency rubric) with ``transformers serve --continuous-batching`` on the device."""
    import asyncio

    from openai import AsyncOpenAI

    from steer.judge.rubrics import get_rubric
    from steer.judge.server import HOST, free_port, serve_command, stop_group, wait_ready

    model_path = resolve_source(EMBEDDED_SOURCE)
    port = free_port()
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    command = [*serve_command(model_path, port, device), "--dtype", dtype, "--continuous-batching"]
    log_path = work / f"serve-{precision}.log"
    with open(log_path, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    rubric = get_rubric("fluency")
    try:
        start = time.perf_counter()
        wait_ready(f"http://{HOST}:{port}", model_path, process, log_path, 300)
        startup = time.perf_counter() - start
        client = AsyncOpenAI(base_url=f"http://{HOST}:{port}/v1", api_key="local", timeout=600)

        async def one(text: str):
            reply = await client.chat.completions.create(
                model=model_path,
                messages=rubric.messages({"response": text}),
                max_tokens=size.judge_tokens,
                temperature=0.0,
            )
            return reply.choices[0].message.content or "", reply.usage.completion_tokens if reply.usage else 0

        async def all_of():
            return await asyncio.gather(*(one(a) for a in answers))

        start = time.perf_counter()
        replies = asyncio.run(all_of())
        seconds = time.perf_counter() - start
    finally:
        stop_group(process)
    parsed = [rubric.parse(text) for text, _ in replies]
    tokens = sum(n for _, n in replies)
    return {
        "seconds": round(seconds, 3),
        "startup_seconds": round(startup, 1),
        "calls": len(answers),
        "calls_per_second": round(len(answers) / seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        "parsed_share": round(sum(p.score is not None for p in parsed) / len(parsed), 3),
        "continuous_batching": True,
    }


def agreement(fp32: dict, bf16: dict) -> dict:
    """bf16 against fp32 on the same (fp32-trained) Δ: losses and greedy text, with the tolerances."""
    a, b = np.asarray(fp32["losses"]), np.asarray(bf16["losses"])
    rel = np.abs(b - a) / np.maximum(np.abs(a), 1e-6)
    ma, mb = np.asarray(fp32["mean_curve"]), np.asarray(bf16["mean_curve"])
    mean_rel = float(np.max(np.abs(mb - ma) / np.maximum(np.abs(ma), 1e-6)))
    same = [
        x["tokens"][:TEXT_TOKENS] == y["tokens"][:TEXT_TOKENS]
        for x, y in zip(fp32["generations"], bf16["generations"], strict=True)
    ]
    share = float(np.mean(same))
    return {
        "loss_median_rel": round(float(np.median(rel)), 5),
        "loss_max_rel": round(float(rel.max()), 5),
        "mean_curve_max_rel": round(mean_rel, 5),
        "text_same_first_tokens": round(share, 3),
        "tolerances": {"loss_median_rel": LOSS_RTOL, "mean_curve_max_rel": MEAN_RTOL, "text": TEXT_AGREEMENT},
        "text_tokens_compared": TEXT_TOKENS,
        "pass": bool(np.median(rel) <= LOSS_RTOL and mean_rel <= MEAN_RTOL and share >= TEXT_AGREEMENT),
    }


def multirun(device: str, reduced: bool, work: Path) -> dict:
    """Two jobs of ``run.py -m hydra/launcher=node node.jobs=2`` at once on the device."""
    overrides = [
        "hydra/launcher=node",
        "node.jobs=2",
        "experiment=smoke",
        "objective=diffmean",
        "layer=10,15",  # two run directories (the run id names the layer, not the seed)
        f"device={'cuda' if device.startswith('cuda') else 'cpu'}",
        f"output_root={work / 'multirun'}",
        "tracking.wandb=false",
        "progress=false",
    ]
    if reduced:
        overrides += ["sweep.grid=[-1,0,1]", "stages=[train,sweep]"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "run.py", "-m", *overrides], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    infos = [json.loads(p.read_text()) for p in (work / "multirun").rglob("run_info.json")]
    finished = sum(1 for info in infos if info.get("status") == "finished")
    return {
        "seconds": round(seconds, 1),
        "exit_code": done.returncode,
        "jobs_finished": finished,
        "pass": done.returncode == 0 and finished == 2,
        "stderr_tail": done.stderr[-1500:] if done.returncode else "",
    }


def table(result: dict) -> str:
    """The one table: stage × precision, then agreement, judge and multirun lines."""
    lines = [
        f"gpu-check on {result['device']} ({result['peak_source']}, peak {result['peak_tflops']:.3g} TFLOP/s)",
        f"{'stage':<16}{'prec':<6}{'seconds':>9}{'tokens/s':>12}{'% peak':>9}{'peak MiB':>10}",
    ]
    for precision in ("fp32", "bf16"):
        for name, row in result[precision]["stages"].items():
            frac = row.get("fraction_of_peak")
            pct = f"{100 * frac:.2f}" if frac is not None else "-"
            tps = row.get("tokens_per_second", "-")
            lines.append(f"{name:<16}{precision:<6}{row['seconds']:>9.2f}{tps:>12}{pct:>9}{row['peak_mib']:>10.0f}")
        j = result[precision]["judge"]
        lines.append(
            f"{'judge (serve)':<16}{precision:<6}{j['seconds']:>9.2f}{j['tokens_per_second']:>12}{'-':>9}{'-':>10}"
        )
    ag = result["agreement"]
    lines += [
        f"bf16 vs fp32: loss median rel {ag['loss_median_rel']:.4f} (tol {LOSS_RTOL}), mean curve max rel "
        f"{ag['mean_curve_max_rel']:.4f} (tol {MEAN_RTOL}), greedy first {TEXT_TOKENS} tokens same in "
        f"{ag['text_same_first_tokens']:.0%} (tol {TEXT_AGREEMENT:.0%}): {'PASS' if ag['pass'] else 'FAIL'}",
        f"multirun (node launcher, 2 jobs on one device): {result['multirun']['jobs_finished']}/2 finished in "
        f"{result['multirun']['seconds']} s: {'PASS' if result['multirun']['pass'] else 'FAIL'}",
        f"total {result['seconds']:.0f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check" / "gpu_check.json")
    parser.add_argument("--reduced", action="store_true", help="the CPU path's small sizes, also on a GPU")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    if not cuda:
        print("gpu-check: no CUDA device on this machine: running the CPU path in a reduced size (exit 0)")
    device = "cuda:0" if cuda else "cpu"
    size = REDUCED if args.reduced or not cuda else FULL
    torch.manual_seed(0)
    from steer.core.models import load_tokenizer

    records = to_records(load_tokenizer(EMBEDDED_SOURCE), sentiment.load())
    if size is REDUCED:
        records = [r for r in records if r.split == "train"][: size.train_pairs] + [
            r for r in records if r.split == "test"
        ][: size.train_pairs]
    peak, source = peak_flops(device)
    result: dict = {"device": device if not cuda else torch.cuda.get_device_name(0), "cuda": cuda}
    result.update(peak_source=source, peak_tflops=peak / 1e12, size=size.__dict__, layer=LAYER)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("WANDB_MODE", "disabled")
        fp32 = run_precision("fp32", device, size, records, None, peak)
        bf16 = run_precision("bf16", device, size, records, fp32["delta"], peak)
        for name, res in (("fp32", fp32), ("bf16", bf16)):
            answers = [g["text"] or "(empty)" for g in res["generations"]][: size.judge_answers]
            res["judge"] = judge(answers, name, device, size, work)
        result["agreement"] = agreement(fp32, bf16)
        for res in (fp32, bf16):
            for key in ("delta", "losses", "generations"):
                res.pop(key)
        result.update(fp32=fp32, bf16=bf16)
        result["multirun"] = multirun(device, size is REDUCED, work)
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
