"""``python -m steer.datacheck [overrides]``: a data set as the unsteered model sees it.

An entry point like ``run.py``: it composes the same Hydra config (``steer/conf/``, same overrides,
e.g. ``dataset=psychopathy dataset.path=...``) and prints, for the chosen data set and model:
the pairs per split, a sample pair, answer lengths in tokens, and the unsteered model's
P(A_p|q) + P(A_n|q), UtilOdds and PrefOdds — once with the bare chat template and once with
the data set's answer-format instruction (``dataset.answer_format``). It writes nothing except,
for AxBench, the cache of generated A_n (``$STEER_CACHE``). ``make data-check`` runs it on the
three paper data sets.
"""

from __future__ import annotations

import sys
from pathlib import Path

from steer.datacheck.stats import answer_lengths, mass_summary, unsteered_scores


def settings(cfg) -> list[tuple[str, str | None]]:
    """(label, instruction): the bare chat template, then the answer-format instruction if set."""
    out = [("bare", None)]
    if cfg.dataset.get("answer_format"):
        out.append(("answer_format", cfg.dataset.answer_format))
    return out


def check(cfg) -> str:
    """The data-check report of ``cfg``'s data set and model, as text."""
    from steer.stages import data
    from steer.stages.context import RunContext

    splits = data.load_dataset(cfg)
    ctx = RunContext(cfg, Path("."))  # only the lazy model/tokenizer are used: nothing is written
    fmt = lambda x: f"{x:.4g}"  # noqa: E731
    lines = [
        f"== data-check: dataset={cfg.dataset.name} (loader {cfg.dataset.loader}) model={cfg.model.name}",
        f"pairs: {len(splits.train)} train, {len(splits.test)} test",
    ]
    for label, instruction in settings(cfg):
        records = data.pair_records(ctx, splits, instruction)
        first = records[0]
        lines += [
            f"\n-- {label}: instruction = {instruction!r}",
            f"sample pair {first.example_id} ({first.split}) meta={first.meta}",
            f"  prompt_text: {first.prompt_text!r}",
            f"  A_p: {first.positive[:300]!r}",
            f"  A_n: {first.negative[:300]!r}",
            "answer length in tokens:",
            answer_lengths(ctx.tokenizer, records).to_string(float_format=fmt),
            "unsteered model (m = 0):",
            mass_summary(unsteered_scores(ctx.model, ctx.tokenizer, records, cfg.sweep.batch_size)).to_string(
                float_format=fmt
            ),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Compose the config from the Hydra overrides ``argv`` and print the report; a bad override,
    data set or model is one line on stderr and exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from steer.stages import compose_config

    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        print("usage: python -m steer.datacheck [HYDRA OVERRIDES...]   (or: steer datacheck ...)\n")
        print(__doc__)
        return 0
    try:
        report = check(compose_config(args))
    except (HydraException, OmegaConfBaseException, ValueError, OSError) as err:
        print(f"data-check: {str(err).strip()}", file=sys.stderr)
        return 2
    print(report)
    return 0
