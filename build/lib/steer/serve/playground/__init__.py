"""The playground: a page at ``/`` of ``steer.serve`` to drag m and watch the text and the curves.

The page (``index.html``, ``app.js``, ``style.css`` beside this file: plain HTML and JavaScript,
no build step, nothing fetched from elsewhere) streams completions through the server's own
``/v1/chat/completions`` and draws each run's swept means and fitted curves from
``GET /playground/curves?run=NAME``, which this module answers from the run's ``sweep.parquet``
and ``fit.json``. Only readers of finished runs are imported here (no torch), and the curves are
evaluated with ``steer.analysis.fit.curve``, the same function the reports use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

from steer import rundir
from steer.analysis.fit import ALL_SPLITS, COLUMNS, curve, mean_curve
from steer.analysis.front import budget_span, fine_grid
from steer.io.artifacts import CorruptArtifact
from steer.serve.runs import RunInfo

STATIC = Path(__file__).resolve().parent
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# Points of a fitted curve sent to the page (it interpolates between them).
POINTS = 401
# The utility budget δ (nats of UtilOdds below its value at m = 0) when the page gives none: the
# judge stage's default max_util_drop.
DEFAULT_DELTA = 1.0


def playground_router(runs: Sequence[RunInfo]) -> APIRouter:
    """The page, its two assets and the curves endpoint of ``runs``. Errors are raised as
    ``HTTPException``, which the API answers in its own error format."""
    router = APIRouter(include_in_schema=False)
    by_name = {run.name: run for run in runs}

    @router.get("/")
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/playground/curves")
    def curves_of(request: Request):
        query = request.query_params
        name = query.get("run")
        if name not in by_name:
            raise HTTPException(404, f"no run named {name!r} is served; served: {', '.join(by_name)}")
        try:
            delta = float(query.get("delta", DEFAULT_DELTA))
        except ValueError:
            raise HTTPException(400, f"delta must be a number, got {query['delta']!r}") from None
        if not math.isfinite(delta) or delta < 0:
            raise HTTPException(400, f"delta must be a finite number >= 0, got {query['delta']!r}")
        try:
            return run_curves(by_name[name].run_dir, query.get("split"), delta)
        except CorruptArtifact as err:
            raise HTTPException(500, str(err)) from None
        except ValueError as err:
            raise HTTPException(400, str(err)) from None

    @router.get("/playground/{asset}")
    def asset(asset: str):
        if asset not in ASSETS:
            raise HTTPException(404, f"/playground/{asset} does not exist (the page's files: {', '.join(ASSETS)})")
        return FileResponse(STATIC / asset, media_type=ASSETS[asset])

    return router


def run_curves(run_dir: Path, split: str | None, delta: float, points: int = POINTS) -> dict:
    """What the page draws for one run and split (default: test, else the first split swept).

    ``{"available", "reason", "m_range", "splits", "split", "swept": {kind: {m, mean, std, n}},
    "fitted": {kind: {m, y, r2}} or null, "budget": {delta, source, m_low, m_high} or null}``.
    The budget is the region of m connected to m = 0 where UtilOdds stays within ``delta`` of its
    value at 0 (``steer.analysis.front.budget_span``): on the fitted curve when the split has a
    fit, else on the swept means. Without a sweep, ``available`` is false, ``reason`` says why and
    ``m_range`` is the configured ``sweep.grid``'s.
    """
    if not (run_dir / rundir.SWEEP).is_file():
        grid = (rundir.read_config(run_dir).get("sweep") or {}).get("grid") or []
        return {
            "available": False,
            "reason": f"{rundir.SWEEP} is missing: run the sweep and fit stages for this run's curves",
            "m_range": [float(min(grid)), float(max(grid))] if grid else None,
        }
    frame = rundir.read_sweep(run_dir)
    splits = [s for s in ALL_SPLITS if s in set(frame["split"])]
    split = split or ("test" if "test" in splits else splits[0])
    if split not in splits:
        raise ValueError(f"split {split!r} is not in {run_dir / rundir.SWEEP} (it has {', '.join(splits)})")
    means = {kind: mean_curve(frame, split, column) for kind, column in COLUMNS.items()}
    m = means["pref"]["m"].to_numpy()
    swept = {kind: {key: _floats(table[key]) for key in ("m", "mean", "std", "n")} for kind, table in means.items()}
    fit = rundir.read_fit(run_dir) if (run_dir / rundir.FIT).is_file() else {}
    fitted, reason = None, None
    if split in fit.get("pref", {}):
        ms = fine_grid(float(m.min()), float(m.max()), points)
        try:
            entries = {kind: fit[kind][split] for kind in COLUMNS}
            fitted = {
                kind: {"m": _floats(ms), "y": _floats(curve(kind, ms, entry["params"])), "r2": entry.get("r2")}
                for kind, entry in entries.items()
            }
        except (KeyError, TypeError, AttributeError) as err:
            raise CorruptArtifact(run_dir / rundir.FIT, f"lacks the {split} fit's parameters ({err!r})") from None
    else:
        reason = f"{rundir.FIT} is missing" if not fit else f"{rundir.FIT} has no {split} fit"
    source = "fitted" if fitted else "swept"
    budget_m = np.asarray(fitted["util"]["m"]) if fitted else m
    budget_util = np.asarray(fitted["util"]["y"] if fitted else means["util"]["mean"], dtype=np.float64)
    budget = None
    if 0.0 in budget_m and np.all(np.isfinite(budget_util)):
        lo, hi = budget_span(budget_m, budget_util, delta)
        budget = {"delta": delta, "source": source, "m_low": float(budget_m[lo]), "m_high": float(budget_m[hi])}
    return {
        "available": True,
        "reason": reason,
        "m_range": [float(m.min()), float(m.max())],
        "splits": splits,
        "split": split,
        "swept": swept,
        "fitted": fitted,
        "budget": budget,
    }


def _floats(values) -> list[float | None]:
    """JSON numbers; NaN and ±inf (which JSON cannot hold) become null."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]
