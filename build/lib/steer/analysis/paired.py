"""Paired bootstrap over shared examples: is one run's number larger than another's?

Runs of one data set score the same test examples. A replicate draws example indices with
replacement once and recomputes every run's number on that same draw, so the difference of two runs
is resampled with its pairing intact (run-to-run noise that both runs share cancels). The verdict of
a difference is ``better`` when its percentile interval lies above 0, ``worse`` below, else ``not
distinguishable`` at that level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from steer.analysis.bootstrap import LEVEL, Interval, percentile_interval

BETTER, WORSE, TIE = "better", "worse", "not distinguishable"


def paired_replicates(
    n_examples: int, statistic: Callable[[np.ndarray], Mapping[str, float]], n: int, seed: int
) -> dict[str, np.ndarray]:
    """``statistic(indices)`` on ``n`` draws of ``n_examples`` indices with replacement (one draw
    shared by every key the statistic returns): one array of ``n`` values per key."""
    if n < 1:
        raise ValueError(f"bootstrap: n must be at least 1, got {n}")
    if n_examples < 1:
        raise ValueError("bootstrap: no examples to draw")
    rng = np.random.default_rng(seed)
    rows = [dict(statistic(rng.integers(0, n_examples, n_examples))) for _ in range(n)]
    return {key: np.array([r[key] for r in rows], dtype=np.float64) for key in rows[0]}


def verdict(interval: Interval | None) -> str:
    """``better`` / ``worse`` when the interval of a difference excludes 0, else ``not distinguishable``."""
    if interval is None:
        return TIE
    if interval.lo > 0:
        return BETTER
    if interval.hi < 0:
        return WORSE
    return TIE


def difference_interval(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> Interval | None:
    """The percentile interval of the paired replicates of a − b."""
    return percentile_interval(np.asarray(a) - np.asarray(b), level)
