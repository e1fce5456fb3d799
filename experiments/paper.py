"""Recipes for the paper's R² tables and dynamics figures: the runs each needs, then its report.

    python experiments/paper.py TARGET [--datasets sentiment] [--dry-run] [HYDRA OVERRIDES...]
    make TARGET [DATASETS=...] [ARGS="overrides"]

Every target uses the same runs: a Hydra multirun of ``run.py`` over the intervention forms ×
trained objectives (``conf/experiment/dynamics.yaml``) and one for DiffMean on vectors
(``conf/experiment/dynamics_diffmean.yaml``), for each data set of ``--datasets``, with stages
train → sweep → fit (table3: then judge, ``judge=local`` by default). Finished runs are skipped
(``stages.json``), so after the first target the
others cost only their report. The overrides go to both multiruns and set the scale: the default
is the embedded model with ``dataset.limit=16``; the paper's scale is e.g.
``--datasets psychopathy,powerseeking model=gemma-2-9b-it dataset.limit=null``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# One recipe per paper table/figure: what it shows. The runs are shared; the report differs.
RECIPES = {
    "table2": "Table 2: R² of the validity-decay fit on the train split, model × form × objective by data set",
    "table5": "Table 5: R² of the fit on the test split",
    "table6": "Table 6: R² of the train fit scored on the test split",
    "table3": "Table 3: judged results (Psychopathy accuracy, PowerSeeking score, AxBench concept and HM)",
    "fig2": "Figure 2: preference/utility dynamics with fits, one figure per model and data set",
    "fig4": "Figure 4: the same dynamics panels (the paper's PowerSeeking figure)",
    "fig5": "Figure 5: the same dynamics panels (the paper's AxBench figure)",
}
EXPERIMENTS = ("dynamics", "dynamics_diffmean")
# Overrides a recipe adds to the shared multiruns: Table 3 also runs the judge stage (the finished
# train, sweep and fit stages are skipped). Small judge work by default; later overrides win.
EXTRA = {
    "table3": ["stages=[train,sweep,fit,judge]", "judge.generation.max_new_tokens=32", "judge.max_tokens=48"],
}
# output_root of conf/experiment/dynamics.yaml: where the recipes' runs and reports live.
DEFAULT_ROOT = "outputs/paper"


def commands(target: str, datasets: str, overrides: list[str]) -> list[list[str]]:
    """The multiruns, then the report command, for ``target``."""
    runs = [
        [
            sys.executable,
            "run.py",
            "-m",
            f"+experiment={name}",
            f"dataset={datasets}",
            *EXTRA.get(target, []),
            *overrides,
        ]
        for name in EXPERIMENTS
    ]
    roots = [o.split("=", 1)[1] for o in overrides if o.startswith("output_root=")]
    report = [sys.executable, "-m", "steer.report", target, "--outputs", roots[-1] if roots else DEFAULT_ROOT]
    if target.startswith("fig"):
        for dataset in datasets.split(","):
            report += ["--dataset", dataset]
    return [*runs, report]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=list(RECIPES), help="; ".join(f"{k}: {v}" for k, v in RECIPES.items()))
    parser.add_argument("--datasets", default="sentiment", help="comma-separated dataset= choices (default sentiment)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(f"not a Hydra override (key=value): {bad[0]}")
    print(f"# {RECIPES[args.target]}")
    for command in commands(args.target, args.datasets, overrides):
        print("+ " + shlex.join(command), flush=True)
        if not args.dry_run:
            done = subprocess.run(command, cwd=REPO)
            if done.returncode != 0:
                print(f"experiments/paper.py: step failed (exit {done.returncode}): {shlex.join(command)}")
                return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
