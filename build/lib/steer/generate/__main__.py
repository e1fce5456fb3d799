"""``python -m steer.generate RUN_DIR --m -4,0,4 "prompt" ...``: one column per m, one table per prompt.

Several runs of one base model compose: ``RUN_A RUN_B --m 4,0 --m -2,0 "prompt"``. Give one
``--m`` per run, in the runs' order, each listing the same number of values: column j steers with
every run at its j-th value (here RUN_A at 4 and RUN_B at -2, then both at 0). The number of
``--m`` options says how many of the leading arguments are runs (one when ``--m`` is absent).
Each prompt is a user turn rendered through the model's chat template (``--raw``: continued as
is); answers are greedy unless ``--temperature`` > 0 (then seeded by ``--seed``), exactly what
``steer.core.generate`` and ``python -m steer.serve`` return for the same run, m and seed. m = 0 is
the base model. Bad arguments exit 2 with one line.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys

from steer.generate import side_by_side


def multipliers(text: str) -> list[float]:
    """``"-4,0,4"`` → [-4.0, 0.0, 4.0]; anything else is an argparse error naming --m."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--m must be numbers separated by commas, got {text!r}") from None
    if not values or not all(math.isfinite(m) for m in values):
        raise argparse.ArgumentTypeError(f"--m must be finite numbers separated by commas, got {text!r}")
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m steer.generate", description=__doc__.splitlines()[0])
    parser.add_argument("args", nargs="+", metavar="RUN_DIR... PROMPT...", help="the runs, then the prompts")
    parser.add_argument(
        "--m", type=multipliers, action="append", default=None, help="multipliers, e.g. -4,0,4; once per run"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true", help="continue the prompt text as is (no chat template)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=None, help="table width (default: the terminal's)")
    # "--m -4,0,4" would read as an option: glue a value that starts with "-" to its flag
    glued, i = [], 0
    while i < len(argv):
        if argv[i] == "--m" and i + 1 < len(argv):
            glued.append(f"--m={argv[i + 1]}")
            i += 2
        else:
            glued.append(argv[i])
            i += 1
    args = parser.parse_intermixed_args(glued)
    args.m = args.m or [[-4.0, 0.0, 4.0]]
    if len(args.args) <= len(args.m):
        parser.error(f"{len(args.m)} --m options name {len(args.m)} runs: give them, then at least one prompt")
    args.run_dirs, args.prompts = args.args[: len(args.m)], args.args[len(args.m) :]
    if len({len(m) for m in args.m}) > 1:
        parser.error(f"every --m must list as many values (one per column), got {[len(m) for m in args.m]}")
    return args


def columns(ms: list[list[float]]) -> list:
    """The multipliers of ``generate``: one m per column, a tuple of one m per run when several compose."""
    return ms[0] if len(ms) == 1 else [tuple(m) for m in zip(*ms, strict=True)]


def label(m) -> str:
    return f"m = {m:g}" if isinstance(m, float) else "m = " + ", ".join(f"{x:g}" for x in m)


def read(run_dirs: list[str], prompts: list[str]) -> list:
    """The runs, checked to compose: one base model, none given twice, no prompt that is a run."""
    from pathlib import Path

    from steer import rundir
    from steer.serve.runs import read_runs

    resolved = [Path(d).resolve() for d in run_dirs]
    twice = [d for i, d in enumerate(run_dirs) if resolved[i] in resolved[:i]]
    if twice:
        raise ValueError(f"{twice[0]} is given twice: a run cannot be composed with itself")
    runs = read_runs(run_dirs)
    stray = [p for p in prompts if (Path(p) / rundir.META).is_file()]
    if stray:
        raise ValueError(f"{stray[0]} is a run directory, read as a prompt: give one --m per run")
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        runs = read(args.run_dirs, args.prompts)
    except ValueError as err:
        print(f"steer.generate: {err}", file=sys.stderr)
        return 2
    import torch

    from steer.core.generate import generate
    from steer.core.interventions import DynamicAffine
    from steer.core.models import load_model
    from steer.core.precision import model_dtype
    from steer.pairs import render_prompt

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model, tokenizer = load_model(runs[0].source, model_dtype(runs[0].precision, device), device)
    ivs = [DynamicAffine.load(run.run_dir, {"model": run.model}) for run in runs]
    texts = args.prompts if args.raw else [render_prompt(tokenizer, p) for p in args.prompts]
    try:
        found = generate(
            model, tokenizer, texts, intervention=ivs[0] if len(ivs) == 1 else ivs, multipliers=columns(args.m),
            max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0, temperature=args.temperature or 1.0,
            top_p=args.top_p, seed=args.seed, progress=False,
        )  # fmt: skip
    except ValueError as err:
        print(f"steer.generate: {err}", file=sys.stderr)
        return 2
    width = args.width or shutil.get_terminal_size((120, 24)).columns
    for run in runs:
        print(f"{run.name}: {run.form} Δ at layer {run.layer} ({run.objective}, {run.dataset}), base {run.model}")
    for p, prompt in enumerate(args.prompts):
        print(f"\n> {prompt}\n")
        print(side_by_side([(label(g.m), g.text) for g in found if g.prompt_index == p], width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
