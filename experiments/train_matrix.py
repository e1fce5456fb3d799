"""Train the nine trained combinations (3 forms x sft/reps/split) on the built-in sentiment set.

    make train-matrix                       # = python experiments/train_matrix.py
    python experiments/train_matrix.py --limit 16 --output-root outputs/train-matrix

Each combination is one ordinary run (``run.py stages=[train,sweep]``) with ``dataset.limit`` pairs
per split, the form's default training settings and a short sweep grid, in its own run directory
under ``--output-root`` (a finished run is reused). The report prints, per combination, the mean
test PrefOdds at -m, 0, +m (m per form below) with UtilOdds, whether it steers (PrefOdds rises from
-m to 0 to +m), the training time per step and the peak memory; then SPLIT against SFT: test
UtilOdds of both at equal test PrefOdds, interpolated along each one's sweep.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from steer import rundir

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ("sft", "reps", "split")
# The m of the table per form, and the sweep grid (symmetric, contains -m, 0, +m).
TABLE_M = {"vector": 8.0, "lora": 1.0, "local_weight": 1.0}
GRIDS = {
    "vector": [-16.0, -8.0, -4.0, 0.0, 4.0, 8.0, 16.0],
    "lora": [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0],
    "local_weight": [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0],
}


def run_dir(root: Path, form: str, objective: str) -> Path:
    return root / f"{form}-{objective}"


def train_and_sweep(root: Path, form: str, objective: str, limit: int, extra: list[str]) -> None:
    grid = "[" + ",".join(f"{m:g}" for m in GRIDS[form]) + "]"
    cmd = [
        sys.executable,
        str(REPO / "run.py"),
        "stages=[train,sweep]",
        f"intervention={form}",
        f"objective={objective}",
        f"dataset.limit={limit}",
        f"sweep.grid={grid}",
        "progress=false",
        f"hydra.run.dir={run_dir(root, form, objective)}",
        *extra,
    ]
    print("$", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"train_matrix: the run failed (exit {done.returncode}): {' '.join(cmd[1:])}")


def mean_test_curves(directory: Path) -> pd.DataFrame:
    """Mean test PrefOdds/UtilOdds per m of one run."""
    frame = rundir.read_sweep(directory)
    return frame[frame.split == "test"].groupby("m")[["pref_odds", "util_odds"]].mean()


def matrix_table(root: Path) -> pd.DataFrame:
    rows = []
    for form, m in TABLE_M.items():
        for objective in OBJECTIVES:
            directory = run_dir(root, form, objective)
            means = mean_test_curves(directory)
            training = rundir.read_meta(directory)["training"]
            pref = [means.loc[v, "pref_odds"] for v in (-m, 0.0, m)]
            util = [means.loc[v, "util_odds"] for v in (-m, 0.0, m)]
            rows.append(
                {
                    "form": form,
                    "objective": objective,
                    "m": m,
                    "pref(-m)": pref[0],
                    "pref(0)": pref[1],
                    "pref(+m)": pref[2],
                    "util(-m)": util[0],
                    "util(0)": util[1],
                    "util(+m)": util[2],
                    "steers": pref[2] > pref[1] > pref[0],
                    "s/step": training["seconds_per_step"],
                    "steps": training["steps"],
                    "peak MiB": training["peak_memory_mib"],
                }
            )
    return pd.DataFrame(rows)


def steering_segment(means: pd.DataFrame, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(PrefOdds, UtilOdds) from m = 0 outwards on one side (side = +1 or -1), up to where
    PrefOdds stops moving in the steering direction (past that peak m no longer steers)."""
    part = means[np.sign(means.index) * side >= 0].sort_index(ascending=side > 0)
    pref, util = part["pref_odds"].to_numpy(), part["util_odds"].to_numpy()
    end = 1
    while end < len(pref) and (pref[end] - pref[end - 1]) * side > 0:
        end += 1
    return pref[:end], util[:end]


def util_at_equal_pref(sft: pd.DataFrame, split: pd.DataFrame, side: int, levels: int = 3) -> list[dict]:
    """UtilOdds of SFT and SPLIT at common PrefOdds on one side of m = 0.

    Both steering segments are interpolated linearly at ``levels`` PrefOdds values spread over the
    range they share (m = 0 itself excluded: there both are the bare model)."""
    curves = [steering_segment(means, side) for means in (sft, split)]
    reach = min(abs(pref[-1] - pref[0]) for pref, _ in curves)
    if reach == 0:
        return []
    start = curves[0][0][0]
    targets = start + side * reach * np.arange(1, levels + 1) / levels
    rows = []
    for p in targets:
        utils = [np.interp(p * side, pref * side, util) for pref, util in curves]
        rows.append(
            {"side": "+m" if side > 0 else "-m", "pref": float(p), "util_sft": utils[0], "util_split": utils[1]}
        )
    return rows


def utility_comparison(root: Path) -> pd.DataFrame:
    rows = []
    for form in TABLE_M:
        sft, split = (mean_test_curves(run_dir(root, form, o)) for o in ("sft", "split"))
        for side in (1, -1):
            rows += [{"form": form, **row} for row in util_at_equal_pref(sft, split, side)]
    table = pd.DataFrame(rows)
    table["split - sft"] = table["util_split"] - table["util_sft"]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=16, help="dataset.limit: pairs per split")
    parser.add_argument("--output-root", type=Path, default=REPO / "outputs" / "train-matrix")
    parser.add_argument("--report-only", action="store_true", help="only print the report of finished runs")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error(f"--limit must be a positive integer, got {args.limit}")
    root = args.output_root.resolve()
    if not args.report_only:
        for form in TABLE_M:
            for objective in OBJECTIVES:
                train_and_sweep(root, form, objective, args.limit, args.overrides)
    missing = [
        str(run_dir(root, f, o))
        for f in TABLE_M
        for o in OBJECTIVES
        if not (run_dir(root, f, o) / "sweep.parquet").is_file()
    ]
    if missing:
        print(
            f"train_matrix: no finished sweep in {missing[0]} ({len(missing)} of 9 runs missing); "
            "run without --report-only first",
            file=sys.stderr,
        )
        return 2
    fmt = lambda x: f"{x:8.2f}"  # noqa: E731
    table = matrix_table(root)
    print(f"\nTest split ({args.limit} pairs per split): mean PrefOdds / UtilOdds at -m, 0, +m")
    print(table.to_string(index=False, float_format=fmt))
    print(f"\nSteers (pref(-m) < pref(0) < pref(+m)): {int(table.steers.sum())} of {len(table)}")
    print("\nSPLIT vs SFT: test UtilOdds at equal test PrefOdds (interpolated along each sweep)")
    print(utility_comparison(root).to_string(index=False, float_format=fmt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
