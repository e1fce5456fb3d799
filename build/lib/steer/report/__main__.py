"""The command line of the reports: ``python -m steer.report TARGET``.

    python -m steer.report table2|table3|table5|table6|fig2|fig4|fig5 [--outputs DIR] [--dataset NAME ...]
    python -m steer.report table2|table3|table5|table6|front|compare [--bootstrap N --seed S] [--deltas 1,2,5]

Tables 2, 5, 6 are the R² of the fits (``steer.report.r2``), ``table3`` the judged results
(``steer.report.table3``), fig2/4/5 the dynamics figures (``steer.report.figures``), ``front`` the
preference-utility front (``steer.report.front``); ``--bootstrap N`` adds 95 % intervals over examples
(``steer.analysis.bootstrap``) to the R² tables, the front and the judged metrics of table3.
Everything is written under ``DIR/reports/``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from steer.analysis.fit import SPLITS
from steer.report.compare import build_compare
from steer.report.figures import FIGURES, build_figure
from steer.report.front import DELTAS, build_front, parse_deltas
from steer.report.r2 import TABLES, build_table
from steer.report.runs import NoRuns
from steer.report.table3 import build_table3


def r2_table(args: argparse.Namespace) -> list[Path]:
    if args.dataset:
        raise ValueError("--dataset applies to figures only: tables cover every data set found")
    return build_table(args.target, args.outputs, args.bootstrap, args.seed)


def front(args: argparse.Namespace) -> list[Path]:
    deltas = parse_deltas(args.deltas) if args.deltas else list(DELTAS)
    return build_front(args.outputs, deltas, args.bootstrap, args.seed)[0]


# One line per report: its name -> what builds it from the parsed options (the files it wrote; a
# table's Markdown first, which the command prints).
REPORTS: dict[str, Callable[[argparse.Namespace], list[Path]]] = {
    **{name: r2_table for name in TABLES},
    "table3": lambda args: build_table3(args.outputs, args.bootstrap, args.seed),
    **{name: lambda args: build_figure(args.target, args.outputs, args.dataset, args.split) for name in FIGURES},
    "front": front,
    "compare": lambda args: build_compare(args.outputs, args.delta, args.bootstrap or 1000, args.seed),
}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m steer.report",
        description="The paper's tables and figures, and the preference-utility front, from finished runs.",
    )
    parser.add_argument(
        "target",
        choices=list(REPORTS),
        help="a paper table or figure, the preference-utility front, or the tuned comparison (docs/tuning.md)",
    )
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help="where the run directories are")
    parser.add_argument(
        "--dataset",
        action="append",
        help="figures: a data set family or dataset.name to draw; repeatable; default the paper's",
    )
    parser.add_argument("--split", choices=SPLITS, default="train", help="figures: which split's curves to draw")
    parser.add_argument(
        "--bootstrap", type=int, default=0, metavar="N", help="tables (3 too), front: N bootstrap replicates (0 = off)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap replicates")
    parser.add_argument("--deltas", default=None, help="front: utility budgets δ, comma-separated (default 1,2,5)")
    parser.add_argument("--delta", type=float, default=1.0, help="compare: the utility budget δ (tuning's tune.delta)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.bootstrap < 0:
        cli.error(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.target in FIGURES and args.bootstrap:
        cli.error("--bootstrap applies to the tables and the front, not to figures")
    try:
        paths = REPORTS[args.target](args)
    except (NoRuns, ValueError, KeyError, OSError) as err:  # no runs, a bad option value, a damaged run file
        print(f"steer.report: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    if paths[0].suffix == ".md":
        print(paths[0].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
