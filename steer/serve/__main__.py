"""``python -m steer.serve RUN_DIR [RUN_DIR ...]``: serve trained runs behind an OpenAI-compatible API.

    python -m steer.serve outputs/sentiment/smollm2-135m/vector-diffmean/layer15 --port 8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    reply = client.chat.completions.create(model="sentiment/smollm2-135m/vector-diffmean/layer15",
                                           messages=[{"role": "user", "content": "Describe a day."}],
                                           extra_body={"m": 4})

The base model loads once; every run's Δ is checked against it. Ctrl-C or SIGTERM stops taking
requests (503), lets the running ones finish for ``--grace`` seconds, cancels the rest (503
``overloaded``), closes the connections and exits 0.
Bad arguments or runs exit 2 with one line naming the file or option.
"""

from __future__ import annotations

import argparse
import logging
import sys

from steer.runtime.interrupt import Interrupted, signals_interrupt

log = logging.getLogger("steer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m steer.serve", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="trained run directories of one base model")
    parser.add_argument("--name", action="append", default=None, help="the model name of each run, in order")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-batch", type=int, default=32, help="rows decoded together")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch; past it 503")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds running requests get to finish on stop")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of torch (default: torch's choice)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def load_served(args: argparse.Namespace, runs: list):
    """The base model once, every run's Δ on it, and the engine that batches their requests."""
    import copy

    import torch

    from steer.core.interventions import DynamicAffine, RowInterventions, multiplier_limit
    from steer.core.models import load_model
    from steer.core.precision import model_dtype
    from steer.serve.api import Served
    from steer.serve.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    base = runs[0]
    log.info("serve: loading %s (%s) on %s", base.source, base.precision, device)
    model, tokenizer = load_model(base.source, model_dtype(base.precision, device), device)
    interventions = [DynamicAffine.load(run.run_dir, {"model": run.model}) for run in runs]
    steering = RowInterventions(interventions).attach(model)
    dtype = next(model.parameters()).dtype
    engine = Engine(model, copy.deepcopy(tokenizer), steering, max_batch=args.max_batch, max_waiting=args.max_queue)
    context = int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    limits = [multiplier_limit(iv, dtype) for iv in interventions]
    return Served(engine, tokenizer, runs, limits, base.model, str(dtype).removeprefix("torch."), context)


def make_server(config, served, grace: float):
    """A uvicorn server whose shutdown first lets the engine finish its rows for ``grace`` seconds
    and cancels the rest (their requests get 503 ``overloaded``), and only then closes the
    connections, so no handler is cut off mid-request and no row decodes without its hooks."""
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        cancelled = (0, 0)

        async def shutdown(self, sockets=None) -> None:
            if not await asyncio.to_thread(served.engine.drain, grace):
                self.cancelled = served.engine.load
                await asyncio.to_thread(served.engine.stop, True)
            await super().shutdown(sockets)

    return Server(config)


def serve_until_stopped(args: argparse.Namespace, served) -> int:
    """uvicorn until Ctrl-C or SIGTERM; then the engine finishes or cancels what is left and one
    line says so."""
    import uvicorn

    from steer.serve.api import create_app

    app = create_app(served)
    config = uvicorn.Config(app, args.host, args.port, log_level=args.log_level, timeout_graceful_shutdown=10)
    server = make_server(config, served, args.grace)
    names = ", ".join(run.name for run in served.runs)
    print(f"steer.serve: {names} (and {served.base} at m = 0) on http://{args.host}:{args.port}/v1", flush=True)
    logging.basicConfig(level=args.log_level.upper(), format="[%(asctime)s][%(levelname)s] %(message)s")
    state = Interrupted()
    served.engine.start()
    try:
        with signals_interrupt(state):  # uvicorn re-raises the signal it shut down on
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        served.engine.stop(cancel=True)
    how = f"on {state.name}" if state.signum else "stopped"
    running, waiting = server.cancelled
    print(
        f"steer.serve: {how} after {served.requests} requests ({running} running and {waiting} waiting cancelled)",
        flush=True,
    )
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from steer.io.artifacts import CorruptArtifact
    from steer.serve.runs import read_runs

    try:
        if args.max_batch < 1 or args.max_queue < 1:
            raise ValueError("--max-batch and --max-queue must be >= 1")
        served = load_served(args, read_runs(args.run_dirs, args.name))
    except (CorruptArtifact, FileNotFoundError, ValueError, IndexError, TypeError) as err:
        print(f"steer.serve: {err}", file=sys.stderr)
        return 2
    return serve_until_stopped(args, served)


if __name__ == "__main__":
    sys.exit(main())
