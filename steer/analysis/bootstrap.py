"""Bootstrap confidence intervals over examples: resample pairs, recompute the mean curve, refit.

A run's numbers (R² of a fit, the best preference within a utility budget) come from mean curves
over the examples of a split. One bootstrap replicate draws the examples of each split with
replacement (a pair is drawn whole: its PrefOdds and UtilOdds at every m together), recomputes the
mean curves from the draw and recomputes the number from them, refitting the validity-decay model.
The interval is the percentile interval of the replicates (``LEVEL`` = 95 %). For R² near 1 it
can sit below the point estimate: a resampled mean curve repeats examples, so it is noisier than the
original one and fits a little worse (R² is biased low under resampling); read it as the spread. Replicates whose
refit fails count as missing and are reported, never silently dropped into a narrower interval.

Seeded: the same ``seed`` and ``n`` give the same replicates. Off by default in the reports
(``--bootstrap N``): every replicate refits, so it costs about N × the fit stage per run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from steer.analysis.fit import COLUMNS, SPLITS, FitError, fit_curve

LEVEL = 0.95
# Restarts of each bootstrap refit: one, against the fit stage's 16, since N refits follow (a refit
# costs ~1 s per restart plus ~2 s of screening on a busy CPU; on the test sweeps 1 and 16 restarts
# reach the same R² to 1e-9).
RESTARTS = 1

Curves = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (kind, split) -> (m, mean over examples)


def example_matrix(frame: pd.DataFrame, split: str, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example ids, m, values [examples, m]) of one split and column of a ``sweep.parquet`` frame."""
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise ValueError(f"no rows of split {split!r} in the sweep")
    table = rows.pivot_table(index="example_id", columns="m", values=column, aggfunc="mean")
    if table.isna().any().any():
        raise ValueError(f"sweep: some examples of split {split!r} lack some m; every example needs the full grid")
    return table.index.to_numpy(), table.columns.to_numpy(dtype=np.float64), table.to_numpy(dtype=np.float64)


def mean_curves(frame: pd.DataFrame) -> Curves:
    """The mean curve of every (kind, split): the point estimate's input."""
    out = {}
    for kind, column in COLUMNS.items():
        for split in SPLITS:
            _, m, values = example_matrix(frame, split, column)
            out[kind, split] = (m, values.mean(axis=0))
    return out


def resampled_curves(frame: pd.DataFrame, n: int, seed: int) -> Iterator[Curves]:
    """``n`` replicates of ``mean_curves`` with the examples of each split drawn with replacement."""
    if n < 1:
        raise ValueError(f"bootstrap: n must be at least 1, got {n}")
    matrices = {}
    for split in SPLITS:
        ids = None
        for kind, column in COLUMNS.items():
            got_ids, m, values = example_matrix(frame, split, column)
            if ids is not None and list(got_ids) != list(ids):
                raise ValueError(f"sweep: pref and util rows of split {split!r} name different examples")
            ids = got_ids
            matrices[kind, split] = (m, values)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        sizes = {split: len(matrices["pref", split][1]) for split in SPLITS}
        draws = {split: rng.integers(0, size, size) for split, size in sizes.items()}
        yield {(kind, split): (m, values[draws[split]].mean(axis=0)) for (kind, split), (m, values) in matrices.items()}


def replicate(
    frame: pd.DataFrame,
    statistic: Callable[[Curves], dict[str, float]],
    n: int,
    seed: int,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """``statistic`` on ``n`` bootstrap replicates: one array of n values per key (NaN where the
    statistic raised FitError on that replicate). ``progress``: a bar over the replicates (each refits)."""
    results: list[dict[str, float] | None] = []
    bar = tqdm(resampled_curves(frame, n, seed), total=n, desc="bootstrap", unit="replicate", disable=not progress)
    for curves in bar:
        try:
            results.append(statistic(curves))
        except FitError:
            results.append(None)
    keys = list(dict.fromkeys(key for r in results if r is not None for key in r))
    nan = float("nan")
    return {key: np.array([nan if r is None else r.get(key, nan) for r in results]) for key in keys}


def r2_statistic(which: str, restarts: int = RESTARTS, seed: int = 0) -> Callable[[Curves], dict[str, float]]:
    """R² of pref and util for Table 2 (``which="train"``), 5 (``"test"``) or 6 (``"transfer"``:
    the train fit scored on the test curve) from one set of mean curves."""

    def statistic(curves: Curves) -> dict[str, float]:
        out = {}
        for kind in COLUMNS:
            fit_split = "train" if which == "transfer" else which
            m, y = curves[kind, fit_split]
            fit = fit_curve(kind, m, y, restarts=restarts, seed=seed)
            out[kind] = fit.score(*curves[kind, "test"]) if which == "transfer" else fit.r2
        return out

    return statistic


@dataclass(frozen=True)
class Interval:
    """A percentile interval of bootstrap replicates; ``missing`` counts failed replicates."""

    lo: float
    hi: float
    n: int
    missing: int = 0


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> Interval | None:
    """The central ``level`` percentile interval of the finite samples (None when there are none)."""
    samples = np.asarray(samples, dtype=np.float64)
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(lo), float(hi), int(samples.size), int(samples.size - finite.size))


def fmt_interval(value: float, interval: Interval | None, digits: int = 3) -> str:
    """``0.950 [0.920, 0.970]`` (the value alone without an interval)."""
    text = f"{value:.{digits}f}"
    return text if interval is None else f"{text} [{interval.lo:.{digits}f}, {interval.hi:.{digits}f}]"
