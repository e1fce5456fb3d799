"""Benchmark ``python -m steer.serve`` against the straightforward way of answering the same requests.

Requests: ``--requests`` chat prompts (instructions of the built-in sentiment set), each at one
multiplier of ``--ms`` in turn, greedy, ``--tokens`` new tokens at most, all for one run (a DiffMean
vector of the built-in set at ``--layer``, made here unless ``--run`` names a run directory).

Straightforward: one request at a time, ``model.generate`` (greedy, KV cache) with the run's hook
at the request's m. Server: a real ``steer.serve`` process, called over HTTP (streaming) by 1, 8 and
32 concurrent clients. Greedy, so every answer must equal the straightforward one (asserted).

Reported: completion tokens per second, the ratio to the straightforward way, time to first token
(median and p90 over requests, from sending the request to its first streamed text), and peak
memory (the server's peak RSS on a CPU, its CUDA max allocated on a GPU; the baseline's likewise).
Results go to outputs/bench/serve.json.

    make bench-serve
    python experiments/bench_serve.py --requests 64 --tokens 64 --threads 4 --clients 1,8,32,64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def make_run(model, tok, run_dir: Path, layer: int) -> Path:
    """A DiffMean vector of 32 built-in sentiment pairs at ``layer``, saved as a run directory."""
    from steer import rundir
    from steer.core.interventions import new_intervention
    from steer.core.models import EMBEDDED_SOURCE
    from steer.datasets import sentiment
    from steer.objectives.diffmean import diffmean_vector
    from steer.pairs import to_records

    records = [r for r in to_records(tok, sentiment.load(n_train=32, n_test=0)) if r.split == "train"]
    iv = new_intervention(model, "vector", layer, model_name="smollm2-135m", objective="diffmean")
    iv.load_tensors({"delta_b": diffmean_vector(model, tok, records, layer, progress=False)})
    iv.save(run_dir)
    config = {"model": {"name": "smollm2-135m", "source": EMBEDDED_SOURCE, "precision": "fp32"}}
    rundir.write_config(run_dir, {**config, "dataset": {"name": "sentiment"}, "run_id": "bench"})
    return run_dir


def questions(n: int) -> list[str]:
    from steer.datasets import sentiment

    prompts = list(dict.fromkeys(p.prompt for p in sentiment.all_pairs()))
    return [prompts[i % len(prompts)] for i in range(n)]


def baseline(model, tok, iv, prompts: list[str], ms: list[float], tokens: int) -> tuple[list[str], int, float]:
    """One request at a time: ``model.generate`` with the run's hook at the request's m.
    (answers, new tokens in all, seconds)."""
    from transformers import GenerationConfig

    from steer.core.generate import stop_ids

    stops = stop_ids(model, tok)
    config = GenerationConfig(do_sample=False, max_new_tokens=tokens, eos_token_id=stops, pad_token_id=tok.pad_token_id)
    texts, count = [], 0
    start = time.perf_counter()
    with torch.inference_mode(), iv.attached(model):
        for prompt, m in zip(prompts, ms, strict=True):
            iv.set_multiplier(m)
            ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], device=model.device)
            row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            new = row[0, ids.shape[1] :].tolist()
            new = new[: next((k for k, t in enumerate(new) if t in stops), len(new))]
            texts.append(tok.decode(new, skip_special_tokens=True))
            count += len(new)
    return texts, count, time.perf_counter() - start


def ask(url: str, question: str, m: float, tokens: int) -> dict:
    """One streamed chat request: its text, completion tokens and time to first text."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    start = time.perf_counter()
    first, parts, usage = None, [], 0
    stream = client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": question}], max_tokens=tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"m": m},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - start
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return {"text": "".join(parts), "tokens": usage, "ttft": first or time.perf_counter() - start}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a run directory (default: a DiffMean run made here)")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--ms", default="-4,-2,0,2,4", help="the requests' multipliers, in turn")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the server and the baseline")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="outputs/bench/serve.json")
    args = parser.parse_args()

    from steer.core.interventions import DynamicAffine
    from steer.core.models import EMBEDDED_SOURCE, load_model
    from steer.io.atomic import atomic_write_text
    from steer.judge.server import free_port
    from steer.pairs import render_prompt

    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model, tok = load_model(EMBEDDED_SOURCE, device=device)
    scratch = tempfile.TemporaryDirectory()
    run_dir = Path(args.run) if args.run else make_run(model, tok, Path(scratch.name) / "run", args.layer)
    iv = DynamicAffine.load(run_dir)
    grid = [float(m) for m in args.ms.split(",")]
    asked = questions(args.requests)
    ms = [grid[i % len(grid)] for i in range(args.requests)]
    prompts = [render_prompt(tok, q) for q in asked]

    baseline(model, tok, iv, prompts[:1], ms[:1], 2)  # warm-up
    expected, base_tokens, base_s = baseline(model, tok, iv, prompts, ms, args.tokens)
    base_peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    print(f"straightforward: {args.requests} requests in {base_s:.1f} s, {base_tokens / base_s:.1f} tokens/s")

    port = free_port()
    command = [sys.executable, "-m", "steer.serve", str(run_dir), "--name", "bench", "--port", str(port)]
    command += ["--threads", str(args.threads), "--device", device, "--max-batch", "64", "--max-queue", "256"]
    command += ["--log-level", "warning"]
    server = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("steer.serve exited before it was ready") from None
                time.sleep(0.3)
        ask(f"{url}/v1", asked[0], 0.0, 2)  # warm-up
        for clients in [int(c) for c in args.clients.split(",")]:
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                found = list(
                    pool.map(lambda qm: ask(f"{url}/v1", qm[0], qm[1], args.tokens), zip(asked, ms, strict=True))
                )
            seconds = time.perf_counter() - start
            differ = [i for i, (f, e) in enumerate(zip(found, expected, strict=True)) if f["text"] != e]
            if differ:
                raise AssertionError(f"{clients} clients: requests {differ} differ from model.generate's answers")
            tokens = sum(f["tokens"] for f in found)
            ttft = np.array([f["ttft"] for f in found])
            rows.append(
                {
                    "clients": clients,
                    "seconds": seconds,
                    "tokens": tokens,
                    "tokens_per_s": tokens / seconds,
                    "ratio": (tokens / seconds) / (base_tokens / base_s),
                    "ttft_median_s": float(np.median(ttft)),
                    "ttft_p90_s": float(np.quantile(ttft, 0.9)),
                }
            )
            print(f"{clients:>3} clients: {tokens / seconds:7.1f} tokens/s ({rows[-1]['ratio']:.2f}x), "
                  f"TTFT median {rows[-1]['ttft_median_s']:.2f} s, p90 {rows[-1]['ttft_p90_s']:.2f} s")  # fmt: skip
        server_peak = peak_rss_mib(server.pid) if not device.startswith("cuda") else None
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    result = {
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "requests": args.requests,
        "max_tokens": args.tokens,
        "multipliers": grid,
        "straightforward": {"seconds": base_s, "tokens": base_tokens, "tokens_per_s": base_tokens / base_s},
        "server": rows,
        "peak_memory_mib": {"server_rss": server_peak, "straightforward": base_peak},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"peak memory: server {server_peak} MiB, straightforward {base_peak:.0f} MiB; written to {out}")


if __name__ == "__main__":
    main()
