"""``python -m steer.generate RUN_DIR --m -4,0,4 "prompt" ...``: one column per m, one table per prompt.

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
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a trained run directory")
    parser.add_argument("prompts", nargs="+", metavar="PROMPT")
    parser.add_argument("--m", type=multipliers, default=[-4.0, 0.0, 4.0], help="multipliers, e.g. -4,0,4")
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
    return parser.parse_args(glued)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from steer.serve.runs import read_run

    try:
        run = read_run(args.run_dir)
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
    model, tokenizer = load_model(run.source, model_dtype(run.precision, device), device)
    iv = DynamicAffine.load(run.run_dir, {"model": run.model})
    texts = args.prompts if args.raw else [render_prompt(tokenizer, p) for p in args.prompts]
    try:
        found = generate(
            model, tokenizer, texts, intervention=iv, multipliers=args.m, max_new_tokens=args.max_new_tokens,
            do_sample=args.temperature > 0, temperature=args.temperature or 1.0, top_p=args.top_p, seed=args.seed,
            progress=False,
        )  # fmt: skip
    except ValueError as err:
        print(f"steer.generate: {err}", file=sys.stderr)
        return 2
    width = args.width or shutil.get_terminal_size((120, 24)).columns
    print(f"{run.name}: {run.form} Δ at layer {run.layer} ({run.objective}, {run.dataset}), base {run.model}")
    for p, prompt in enumerate(args.prompts):
        columns = [(f"m = {g.m:g}", g.text) for g in found if g.prompt_index == p]
        print(f"\n> {prompt}\n")
        print(side_by_side(columns, width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
