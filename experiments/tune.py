"""Tune every objective of every form on each data set (Hydra's Optuna sweeper), then compare.

    make tune DATASETS=sentiment,psychopathy TRIALS=20 [FORMS=vector,lora] [ARGS="overrides"]
    python experiments/tune.py --datasets sentiment,psychopathy --trials 6 --data ../shared/data --quick

One study per data set x form x objective (``steer/conf/experiment/tune_<form>_<objective>.yaml``; DiffMean
over the layer, vector form only), each run as ``python run.py -m experiment=tune_...``. Studies are
filled in rounds (``--rounds``: every study to 2 finished trials, then 4, ... up to ``--trials``), so
an interrupted campaign has every cell early; a study resumes where it stopped and never re-runs a
finished trial, so the same command continues it. ``--quick`` caps the work per trial for a CPU
(``QUICK``: few pairs, short grids, few fit restarts). Then ``python -m steer.report compare``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from paper import LOCAL_DATA

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ("sft", "reps", "split")
# What one trial may cost on a CPU (about a minute on 2 cores): 18 train pairs of which 6 are carved
# out for validation, 24 test pairs, epochs, the multipliers swept (9, the fewest the fit accepts,
# over each form's range) and fit restarts.
QUICK = [
    "dataset.n_train=18",
    "dataset.validation=6",
    "dataset.n_test=24",
    "train.epochs=choice(1,2,3)",
    "fit.restarts=4",
]
QUICK_GRID = {
    "vector": "[-20,-12,-6,-2,0,2,6,12,20]",
    "lora": "[-2,-1.2,-0.6,-0.2,0,0.2,0.6,1.2,2]",
    "local_weight": "[-2,-1.2,-0.6,-0.2,0,0.2,0.6,1.2,2]",
    "diffmean": "[-4,-3,-2,-1,0,1,2,3,4]",
}


def studies(forms: list[str]) -> list[tuple[str, str]]:
    """(form, objective) of every study: each form x trained objective, and DiffMean (vector only)."""
    out = [(form, objective) for form in forms for objective in OBJECTIVES]
    if "vector" in forms:
        out.append(("vector", "diffmean"))
    return out


def study_command(
    dataset: str, form: str, objective: str, trials: int, data: Path | None, quick: bool, overrides: list[str]
) -> list[str]:
    command = [sys.executable, "run.py", "-m", f"experiment=tune_{form}_{objective}", f"dataset={dataset}"]
    if data is not None and dataset in LOCAL_DATA:
        command.append(f"dataset.path={data / LOCAL_DATA[dataset]}")
    command.append(f"hydra.sweeper.n_trials={trials}")
    if quick:  # QUICK's caps, each unless the caller's overrides set its key (e.g. train.epochs=...)
        keys = {o.split("=", 1)[0] for o in overrides}
        grid = f"sweep.grid={QUICK_GRID['diffmean' if objective == 'diffmean' else form]}"
        command += [o for o in [grid, *QUICK] if o.split("=", 1)[0] not in keys]
    command += overrides
    return command[:5] + applicable(command[5:], f"experiment=tune_{form}_{objective}")


def applicable(overrides: list[str], study: str) -> list[str]:
    """The overrides whose top-level node the study's composed config has (Hydra's own always):
    DiffMean's config has no ``train``, so the campaign's training keys reach the trained studies only."""
    from steer.stages import compose_config

    cfg = compose_config([study])
    return [o for o in overrides if (top := re.split(r"[./=]", o.lstrip("+~"), maxsplit=1)[0]) == "hydra" or top in cfg]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="sentiment", help="comma-separated data sets (steer/conf/dataset)")
    parser.add_argument("--forms", default="vector,lora", help="comma-separated intervention forms")
    parser.add_argument("--trials", type=int, default=20, help="finished trials per study")
    parser.add_argument("--rounds", type=int, default=2, help="trials added to every study per round")
    parser.add_argument("--data", type=Path, default=None, help="local copy of the paper's data (../shared/data)")
    parser.add_argument("--quick", action="store_true", help="cap each trial's work for a CPU (QUICK)")
    args, overrides = parser.parse_known_args(argv)
    if args.trials < 1 or args.rounds < 1:
        print("--trials and --rounds must be positive", file=sys.stderr)
        return 2
    targets = list(range(min(args.rounds, args.trials), args.trials, args.rounds)) + [args.trials]
    failed = 0
    for target in targets:
        for dataset in args.datasets.split(","):
            for form, objective in studies(args.forms.split(",")):
                command = study_command(dataset, form, objective, target, args.data, args.quick, overrides)
                start = time.perf_counter()
                print(f"[tune] {dataset} {form}-{objective}: to {target} trial(s)", flush=True)
                code = subprocess.run(command, cwd=REPO).returncode
                print(
                    f"[tune] {dataset} {form}-{objective}: exit {code} in {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
                failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
