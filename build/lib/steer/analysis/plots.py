"""Dynamics plots: mean PrefOdds (solid) and UtilOdds (dashed) against m, the fitted validity-decay
curves (black), a band of ± one standard deviation over examples and, where given, the simpler curve
AICc prefers to the paper's form (thin grey). A fit with parameters on a bound has a † after its R²
and the parameters in the panel's note. One panel per curve pair;
the per-run figure and the paper's multi-panel figures are both built from ``draw_dynamics``.
Every figure is saved as PNG and, beside it, as PDF (vector, for papers): ``save_figure``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from steer.analysis.fit import Fit
from steer.io.atomic import atomic_path

LEGEND_INCHES = 0.4
STYLE = {"pref": ("C0", "-", "o", "PrefOdds"), "util": ("C3", "--", "s", "UtilOdds")}


@dataclass(frozen=True)
class Panel:
    """One panel: the mean curves (``steer.analysis.fit.mean_curve`` frames) and their fits (None: no fit)."""

    title: str
    curves: dict[str, pd.DataFrame]
    fits: dict[str, Fit | None]
    note: str = ""
    # Per kind: (name, predictor) of the alternative preferred to the paper's form, drawn thin.
    alternatives: dict[str, tuple[str, Callable]] = field(default_factory=dict)


def draw_dynamics(ax, panel: Panel) -> None:
    """Draw one panel's curves, bands and fits on ``ax``; the R² of the fits go under the title."""
    ax.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(0.0, color="0.8", lw=0.8, zorder=0)
    scores, notes = [], [panel.note] if panel.note else []
    for kind, frame in panel.curves.items():
        color, dash, marker, _ = STYLE[kind]
        m, mean, std = frame["m"].to_numpy(), frame["mean"].to_numpy(), frame["std"].to_numpy()
        ax.fill_between(m, mean - std, mean + std, color=color, alpha=0.15, lw=0)
        ax.plot(m, mean, dash, color=color, marker=marker, ms=3.5, lw=1.6)
        fit = panel.fits.get(kind)
        if fit is not None:
            fine = np.linspace(m.min(), m.max(), 400)
            ax.plot(fine, fit.predict(fine), dash, color="black", lw=1.0)
            mark = "†" if fit.at_bound else ""
            scores.append(f"{kind} {fit.r2:.3f}{mark}" if np.isfinite(fit.r2) else f"{kind} n/a{mark}")
            if fit.at_bound:
                notes.append(f"† {kind} at a bound: {', '.join(fit.at_bound)}")
            if kind in panel.alternatives:
                name, predict = panel.alternatives[kind]
                ax.plot(fine, predict(fine), dash, color="0.45", lw=0.6)
                notes.append(f"thin: {kind} {name} (AICc-preferred)")
    if notes:
        ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=6, va="bottom", ha="left", wrap=True)
    ax.set_title(panel.title + ("\nR² " + " · ".join(scores) if scores else ""), fontsize=9)
    ax.set_xlabel("m", fontsize=8)
    ax.set_ylabel("log-odds", fontsize=8)
    ax.tick_params(labelsize=7)


def legend_handles() -> list:
    handles = []
    for color, dash, marker, label in STYLE.values():
        handles.append(Line2D([], [], color=color, ls=dash, marker=marker, ms=3.5, label=f"mean {label}"))
    handles.append(Line2D([], [], color="black", lw=1.0, label="fit (solid pref, dashed util)"))
    handles.append(Line2D([], [], color="0.45", lw=0.6, label="simpler curve AICc prefers"))
    handles.append(Patch(color="0.5", alpha=0.3, label="± 1 s.d. over examples"))
    return handles


def save_figure(fig: Figure, path: Path) -> Path:
    """``fig`` as PNG at ``path`` and as PDF beside it (``path.with_suffix(".pdf")``), each written
    atomically; the PDF without a creation date, so one figure gives the same bytes twice. Returns ``path``."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    with atomic_path(path.with_suffix(".pdf")) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None})
    return path


def save_dynamics_figure(path: Path, grid: Sequence[Sequence[Panel | None]], title: str) -> Path:
    """A figure of panels in rows (None leaves a cell empty), saved as PNG at ``path`` and PDF beside it."""
    rows, cols = len(grid), max(len(row) for row in grid)
    # matplotlib's object API, not pyplot: no global figure state and no GUI backend.
    # At least two panels wide, so the title and the one-line legend fit above and below one panel.
    fig = Figure(figsize=(max(3.6 * cols, 7.2), 2.9 * rows + LEGEND_INCHES))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            panel = grid[r][c] if c < len(grid[r]) else None
            if panel is None:
                axes[r][c].axis("off")
            else:
                draw_dynamics(axes[r][c], panel)
    fig.suptitle(title, fontsize=10)
    fig.legend(handles=legend_handles(), loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, LEGEND_INCHES / (2.9 * rows + LEGEND_INCHES), 1, 1))
    return save_figure(fig, path)
