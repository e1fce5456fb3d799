"""Bootstrap confidence intervals over examples: resample pairs, recompute the mean curve, refit.

A run's numbers (the fit's parameters and regions, R² of a fit, the best preference within a utility
budget) come from mean curves over the examples of a split. One bootstrap replicate draws the examples
of each split with replacement (a pair is drawn whole: its PrefOdds and UtilOdds at every m together),
recomputes the mean curves from the draw and recomputes the number from them, refitting the
validity-decay model with restarts. The interval is the percentile interval of the replicates
(``LEVEL`` = 95 %). For R² near 1 it can sit below the point estimate: a resampled mean curve repeats
examples, so it is noisier than the original one and fits a little worse (R² is biased low under
resampling); read it as the spread. Replicates whose refit fails count as missing and are reported,
never silently dropped into a narrower interval.

``fit_intervals`` (the fit stage's ``fit.bootstrap``) gives an interval for every parameter of every
train and test fit, for the peak widths √(L/2p), and for the regions, and counts the replicates whose
refit ends on a bound. Each refit starts from the point fit and ``RESTARTS`` screened decays.

Seeded: the same ``seed`` and ``n`` give the same replicates. Off by default in the reports
(``--bootstrap N``): every replicate refits, so it costs about N × the fit stage per run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from steer.analysis.fit import COLUMNS, SPLITS, FitError, SweepFit, example_matrix, fit_curve, regions, width

LEVEL = 0.95
# Restarts of each bootstrap refit (plus the point fit as a start, where there is one) and the
# candidate decays screened for them: N refits follow, so fewer than the fit stage's 16 and 2000.
RESTARTS = 2
SCREEN = 400

Curves = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (kind, split) -> (m, mean over examples)


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
            fit = fit_curve(kind, m, y, restarts=restarts, seed=seed, screen=SCREEN)
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


def fit_intervals(
    frame: pd.DataFrame, result: SweepFit, n: int, seed: int = 0, restarts: int = RESTARTS, progress: bool = False
) -> dict:
    """Percentile intervals of every parameter (and peak width) of the train and test fits of
    ``result`` and of the train preference fit's regions, from ``n`` replicates of ``frame``'s examples.

    Returns ``{(kind, split): {"intervals": {name: [lo, hi]}, "bootstrap": {"n", "missing", "level",
    "at_bound": {coordinate: replicates}}}, "regions": {side: {"linear_end_interval": [lo, hi],
    "linear_end_reached": k, ...}}}`` (a region is "reached" in k replicates; its interval is over those)."""
    return summarise(result, fit_replicates(frame, result, n, seed, restarts, progress))


def bootstrapped(result: SweepFit) -> list[tuple[str, str]]:
    """The fits a bootstrap refits: every train and test fit that is not degenerate."""
    return [(kind, split) for kind in COLUMNS for split in SPLITS if not result.fits[kind, split].degenerate]


def fit_replicates(
    frame: pd.DataFrame,
    result: SweepFit,
    n: int,
    seed: int = 0,
    restarts: int = RESTARTS,
    progress: bool = False,
    keys: Sequence[tuple[str, str]] | None = None,
) -> dict[str, np.ndarray]:
    """The refitted parameters of ``n`` replicates, one array per ``"kind.split.name"`` (and
    ``"kind.split.bound.coordinate"``: 1 where that replicate's refit ends on the bound, and
    ``"regions.side.name"``): each of the ``keys`` fits (default ``bootstrapped``) refitted from its
    point fit plus ``restarts`` screened starts."""
    keys = bootstrapped(result) if keys is None else list(keys)

    def statistic(curves: Curves) -> dict[str, float]:
        out = {}
        for kind, split in keys:
            point = result.fits[kind, split]
            fit = fit_curve(kind, *curves[kind, split], restarts, seed, start=point.params, screen=SCREEN)
            out.update({f"{kind}.{split}.{k}": v for k, v in fit.params.items()})
            for side in ("pos", "neg"):
                out[f"{kind}.{split}.width_{side}"] = width(fit.params[f"L_{side}"], fit.params[f"p_{side}"])
            out.update({f"{kind}.{split}.bound.{k}": 1.0 for k in fit.at_bound})
            if (kind, split) == ("pref", "train"):
                found = regions(fit.params, result.m_max)
                for side in ("positive", "negative"):
                    for name in ("linear_end", "convergence_start"):
                        value = found[side][name]
                        out[f"regions.{side}.{name}"] = float("nan") if value is None else value
        return out

    return replicate(frame, statistic, n, seed, progress)


def summarise(
    result: SweepFit,
    samples: dict[str, np.ndarray],
    level: float = LEVEL,
    keys: Sequence[tuple[str, str]] | None = None,
) -> dict:
    """``fit_intervals``'s summary of ``fit_replicates`` samples at ``level``."""
    n = len(next(iter(samples.values()))) if samples else 0
    nothing = np.full(n, np.nan)
    out: dict = {}
    for kind, split in bootstrapped(result) if keys is None else keys:
        prefix = f"{kind}.{split}."
        names = [*result.fits[kind, split].params, "width_pos", "width_neg"]
        intervals = {name: percentile_interval(samples.get(prefix + name, nothing), level) for name in names}
        bound = {
            key.removeprefix(prefix + "bound."): int(np.nansum(values))
            for key, values in samples.items()
            if key.startswith(prefix + "bound.")
        }
        out[kind, split] = {
            "intervals": {name: None if iv is None else [iv.lo, iv.hi] for name, iv in intervals.items()},
            "bootstrap": {
                "n": n,
                "missing": int(np.sum(~np.isfinite(samples.get(prefix + names[0], nothing)))),
                "level": level,
                "at_bound": bound,
            },
        }
    out["regions"] = {}
    for side in ("positive", "negative"):
        entry = {}
        for name in ("linear_end", "convergence_start"):
            values = samples.get(f"regions.{side}.{name}", nothing)
            interval = percentile_interval(values, level)
            entry[f"{name}_interval"] = None if interval is None else [interval.lo, interval.hi]
            entry[f"{name}_reached"] = int(np.sum(np.isfinite(values)))
        out["regions"][side] = entry
    return out
