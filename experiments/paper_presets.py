"""The paper's published settings as Hydra presets, one per data set × model × form × objective.

    python experiments/paper_presets.py           # (re)write steer/conf/experiment/paper/**
    python experiments/paper_presets.py --check   # exit 1 if a preset is missing, stale or extra

``CELLS`` holds one row per training file of the authors' folder (zjunlp/EasyEdit
``hparams/Steer/experiment_hparams/spilt_experiment/``, spelled so there, at ``COMMIT``): the values
were transcribed from those files, a key the file leaves out from its hparams class's default
(named in the preset). Every cell becomes
``steer/conf/experiment/paper/<dataset>/<model>/<form>-<objective>.yaml``; each Gemma-2-9B-IT cell also
becomes ``paper/<dataset>/smollm2-135m/...``: the same settings on the embedded model at its layer
15, so a CPU runs the recipe end to end. Run one as
``python run.py experiment=paper/psychopathy/gemma-2-9b-it/lora-split``.

How the authors' batches map onto steer's (``batch_geometry``): their trainer expands a batch of B
examples into B·P rows (P = their ``preference_pairs``: +m only, or +m and −m), scores them in
minibatches of B rows — each minibatch's ``outputs.loss`` is the mean cross-entropy per answer token
of its rows — and averages the P·G minibatches of G accumulated batches. steer's micro-step of b
pairs holds b·P rows and is one reduction group of ``batch_token_mean``, so b = B/P pairs and
P·G micro-steps per optimiser step give the same rows per group, pairs per step and steps per epoch.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "steer" / "conf" / "experiment" / "paper"
SOURCE_REPO = "zjunlp/EasyEdit"
COMMIT = "14cea8245f06715684592ab55184939b99d70784"
FOLDER = "hparams/Steer/experiment_hparams/spilt_experiment"
EMBEDDED, EMBEDDED_LAYER, EMBEDDED_FROM = "smollm2-135m", 15, "gemma-2-9b-it"
OUTPUT_ROOT = "outputs/paper-settings"
# Every training file of the folder draws m from one of these (vectors: 2..20; ΔW forms: 0.2..2.0).
FACTORS = {
    "vector": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0],
    "lora": [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0],
    "local_weight": [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0],
}
# The same in every training file: dropout 0.1, weight decay 0, λ_p 1, no reference term, gradient
# norm clipped at 1.0, RePS's scaled SimPO with β 1 and simpo_scaler 1; every apply_*.yaml steers at
# multiplier 1.0 (Table 3).
DROPOUT, WEIGHT_DECAY, LAMBDA_P, GRAD_CLIP, APPLY_M = 0.1, 0.0, 1.0, 1.0, 1.0
# Hidden sizes: their vector starts U(-1/sqrt(d), 1/sqrt(d)) (nn.Linear's default), of std 1/sqrt(3d);
# steer's random init draws N(0, init_scale²) per coordinate with that std.
HIDDEN = {"gemma-2-9b-it": 3584, "qwen2.5-7b-instruct": 3584, "smollm2-135m": 576}
# Their folder names: the objective's (SPLIT spelled "spilt"; DiffMean is their CAA) and the model's.
ALG = {"sft": "sft", "reps": "reps", "split": "spilt", "diffmean": "caa"}
MODEL_DIR = {"gemma-2-9b-it": "gemma-2-9b-it", "qwen2.5-7b-instruct": "qwen2.5-7b-it"}
NAMES = {
    "psychopathy": "Psychopathy",
    "powerseeking": "PowerSeeking",
    "axbench": "AxBench",
    "gemma-2-9b-it": "Gemma-2-9B-IT",
    "qwen2.5-7b-instruct": "Qwen-2.5-7B-Instruct",
    "smollm2-135m": "SmolLM2-135M-Instruct (embedded)",
}


@dataclass(frozen=True)
class Cell:
    """One training file's settings. ``directions``: 1 = ``["orig_add"]`` (+m only), 2 = +m and −m;
    ``null_out``: the −m direction of their RePS vectors nulls the vector's component instead of
    subtracting it (``substraction_type: null_it_out``); ``defaulted``: keys the file leaves out."""

    dataset: str
    model: str
    form: str
    objective: str
    layer: int
    lr: float = 0.0
    epochs: int = 0
    batch: int = 0
    accum: int = 0
    directions: int = 2
    lambda_n: float | None = None
    gamma: float | None = None
    theta: float | None = None
    rank: int | None = None
    alpha: int | None = None
    null_out: bool = False
    defaulted: tuple[str, ...] = ()
    suffix: str = ""  # of the file name: <alg>/generate_<alg>_<form><suffix>.yaml (CAA: generate_caa.yaml)

    @property
    def source(self) -> str:
        alg = ALG[self.objective]
        file = "caa/generate_caa.yaml" if alg == "caa" else f"{alg}/generate_{alg}_{self.form}{self.suffix}.yaml"
        return f"{FOLDER}/{self.dataset}/{MODEL_DIR[self.model]}/{file}"


def _cells() -> list[Cell]:
    g, q = "gemma-2-9b-it", "qwen2.5-7b-instruct"
    rank, theta, odd = "low_rank_dimension (4)", "margin_threshold (0.5)", "_XXXXX"
    rows = []
    # their CAA (DiffMean) of every data set and model: only the layer
    for ds in ("axbench", "powerseeking", "psychopathy"):
        rows += [Cell(ds, g, "vector", "diffmean", 20), Cell(ds, q, "vector", "diffmean", 14)]
    rows += [
        # AxBench, Gemma-2-9B-IT, layer 20
        Cell("axbench", g, "local_weight", "reps", 20, 0.08, 12, 2, 6),
        Cell("axbench", g, "lora", "reps", 20, 0.08, 12, 2, 6, rank=4, alpha=32),
        Cell("axbench", g, "vector", "reps", 20, 0.08, 18, 4, 1, null_out=True),
        Cell("axbench", g, "local_weight", "sft", 20, 0.08, 12, 2, 6),
        Cell("axbench", g, "lora", "sft", 20, 0.08, 12, 2, 6, rank=4, alpha=32),
        Cell("axbench", g, "vector", "sft", 20, 0.08, 18, 4, 1),
        Cell("axbench", g, "local_weight", "split", 20, 0.04, 12, 2, 2, 1, 0.3, 3.5, 0.6),
        Cell("axbench", g, "lora", "split", 20, 0.04, 12, 2, 2, 1, 0.5, 5, 0.45, 4, 32),
        Cell("axbench", g, "vector", "split", 20, 0.08, 18, 4, 1, 1, 0.6, 4, 0.5),
        # AxBench, Qwen-2.5-7B-Instruct, layer 14 (two SPLIT files carry an _XXXXX suffix there)
        Cell("axbench", q, "local_weight", "reps", 14, 0.08, 12, 2, 6),
        Cell("axbench", q, "lora", "reps", 14, 0.08, 18, 4, 1, rank=4, alpha=32),
        Cell("axbench", q, "vector", "reps", 14, 0.08, 18, 4, 1, null_out=True),
        Cell("axbench", q, "local_weight", "sft", 14, 0.08, 12, 2, 6),
        Cell("axbench", q, "lora", "sft", 14, 0.08, 12, 2, 6, rank=4, alpha=32),
        Cell("axbench", q, "vector", "sft", 14, 0.08, 18, 4, 1),
        Cell("axbench", q, "local_weight", "split", 14, 0.04, 12, 2, 2, 1, 0.3, 3.5, 0.6, suffix=odd),
        Cell("axbench", q, "lora", "split", 14, 0.04, 12, 2, 2, 1, 0.5, 5, 0.45, 4, 32, suffix=odd),
        Cell("axbench", q, "vector", "split", 14, 0.08, 18, 2, 2, 1, 0.6, 6, 0.5),
        # PowerSeeking, Gemma-2-9B-IT, layer 20 (its SFT local-weight file names the method "weight")
        Cell("powerseeking", g, "local_weight", "reps", 20, 0.01, 2, 4, 2),
        Cell("powerseeking", g, "lora", "reps", 20, 0.01, 2, 4, 2, rank=4, alpha=32),
        Cell("powerseeking", g, "vector", "reps", 20, 0.08, 2, 4, 1, null_out=True),
        Cell("powerseeking", g, "local_weight", "sft", 20, 0.01, 2, 4, 2),
        Cell("powerseeking", g, "lora", "sft", 20, 0.01, 2, 4, 2, rank=4, alpha=32, defaulted=(rank,)),
        Cell("powerseeking", g, "vector", "sft", 20, 0.08, 2, 4, 1),
        Cell("powerseeking", g, "local_weight", "split", 20, 0.01, 2, 2, 2, 1, 0.5, 5, 0.4),
        Cell("powerseeking", g, "lora", "split", 20, 0.01, 2, 2, 2, 1, 0.5, 5, 0.4, 4, 32),
        Cell("powerseeking", g, "vector", "split", 20, 0.08, 2, 4, 1, 1, 0.5, 5, 0.5),
        # PowerSeeking, Qwen-2.5-7B-Instruct, layer 14
        Cell("powerseeking", q, "local_weight", "reps", 14, 0.01, 2, 2, 2),
        Cell("powerseeking", q, "lora", "reps", 14, 0.01, 2, 4, 2, rank=4, alpha=32),
        Cell("powerseeking", q, "vector", "reps", 14, 0.08, 2, 4, 1, null_out=True),
        Cell("powerseeking", q, "local_weight", "sft", 14, 0.01, 2, 2, 2),
        Cell("powerseeking", q, "lora", "sft", 14, 0.01, 1, 4, 2, rank=4, alpha=32, defaulted=(rank,)),
        Cell("powerseeking", q, "vector", "sft", 14, 0.08, 2, 4, 1),
        Cell("powerseeking", q, "local_weight", "split", 14, 0.01, 2, 2, 2, 1, 0.6, 5, 0.5),
        Cell("powerseeking", q, "lora", "split", 14, 0.01, 2, 2, 2, 2, 0.5, 4, 0.5, 4, 32),
        Cell("powerseeking", q, "vector", "split", 14, 0.08, 2, 4, 1, 2, 0.6, 5, 0.5),
        # Psychopathy, Gemma-2-9B-IT, layer 20
        Cell("psychopathy", g, "local_weight", "reps", 20, 0.01, 2, 4, 2),
        Cell("psychopathy", g, "lora", "reps", 20, 0.01, 2, 4, 2, rank=4, alpha=32),
        Cell("psychopathy", g, "vector", "reps", 20, 0.08, 2, 4, 1, null_out=True),
        Cell("psychopathy", g, "local_weight", "sft", 20, 0.01, 2, 4, 2),
        Cell("psychopathy", g, "lora", "sft", 20, 0.01, 2, 4, 2, rank=4, alpha=32, defaulted=(rank,)),
        Cell("psychopathy", g, "vector", "sft", 20, 0.08, 2, 4, 1),
        Cell("psychopathy", g, "local_weight", "split", 20, 0.01, 2, 4, 2, 1, 0.5, 5, 0.4),
        Cell("psychopathy", g, "lora", "split", 20, 0.01, 2, 4, 2, 2, 0.5, 5, 0.4, 4, 32),
        Cell("psychopathy", g, "vector", "split", 20, 0.08, 2, 4, 1, 2, 0.5, 8, 0.3),
        # Psychopathy, Qwen-2.5-7B-Instruct, layer 14
        Cell("psychopathy", q, "local_weight", "reps", 14, 0.01, 2, 2, 2),
        Cell("psychopathy", q, "lora", "reps", 14, 0.01, 2, 4, 2, rank=4, alpha=32),
        Cell("psychopathy", q, "vector", "reps", 14, 0.08, 2, 4, 1, null_out=True),
        Cell("psychopathy", q, "local_weight", "sft", 14, 0.01, 2, 2, 2),
        Cell("psychopathy", q, "lora", "sft", 14, 0.01, 2, 2, 6, rank=4, alpha=32, defaulted=(rank,)),
        Cell("psychopathy", q, "vector", "sft", 14, 0.08, 2, 4, 1),
        Cell("psychopathy", q, "local_weight", "split", 14, 0.01, 1, 4, 2, 1, 0.5, 6, 0.4),
        Cell("psychopathy", q, "lora", "split", 14, 0.01, 1, 4, 2, 2, 0.5, 6, 0.4, 4, 32),
        Cell("psychopathy", q, "vector", "split", 14, 0.08, 2, 4, 1, 2, 0.6, 4, 0.5, defaulted=(theta,)),
    ]  # fmt: skip
    return rows


CELLS = _cells()


def batch_geometry(cell: Cell) -> tuple[int, int]:
    """(steer's batch_size, grad_accum) for the authors' (B, G, P): (B/P, G·P) (module docstring)."""
    if cell.batch % cell.directions:
        raise ValueError(f"{cell.source}: batch {cell.batch} does not split into {cell.directions} directions")
    return cell.batch // cell.directions, cell.accum * cell.directions


def with_unit_multipliers(grid: list[float]) -> list[float]:
    """The form's sweep grid with ±1 added (Table 3 reads the sweep at m = 1)."""
    return sorted({float(m) for m in grid} | {-APPLY_M, APPLY_M})


def form_grid(form: str) -> list[float]:
    """The form's default sweep grid (its ``sweep`` option in steer.stages.schema)."""
    from steer.stages.schema import SWEEPS

    return list(SWEEPS[form]().grid)


def relative(cell: Cell, model: str) -> str:
    return f"{cell.dataset}/{model}/{cell.form}-{cell.objective}"


def _num(value: float) -> str:
    """A float as YAML reads it back as a float (1.0, not 1)."""
    return repr(float(value))


def _flow(values: list[float]) -> str:
    return "[" + ", ".join(map(_num, values)) + "]"


def train_lines(cell: Cell, model: str) -> list[str]:
    """The ``train:`` node of a trained cell (their batch geometry mapped onto steer's)."""
    batch, accum = batch_geometry(cell)
    directions = "+m and -m" if cell.directions == 2 else "+m only (preference_pairs [orig_add])"
    lines = [
        f"# Theirs: batch {cell.batch} x gradient accumulation {cell.accum}, {directions}; steer's",
        f"# micro-step of batch_size pairs x {cell.directions} direction(s) is one of their minibatches.",
        "train:",
        f"  lr: {_num(cell.lr)}",
        f"  epochs: {cell.epochs}",
        f"  batch_size: {batch}",
        f"  grad_accum: {accum}",
        f"  weight_decay: {_num(WEIGHT_DECAY)}",
        f"  grad_clip: {_num(GRAD_CLIP)}",
        f"  dropout: {_num(DROPOUT)}",
        f"  directions: {'both' if cell.directions == 2 else 'positive'}",
        f"  factors: {_flow(FACTORS[cell.form])}",
    ]
    if cell.form == "vector":
        lines += ["  init: random", f"  init_scale: {_num(round((3 * HIDDEN[model]) ** -0.5, 5))}"]
    return lines


def objective_lines(cell: Cell) -> list[str]:
    """The ``objective:`` node: SPLIT's weights, SFT's and SPLIT's reduction, RePS's SimPO."""
    if cell.objective == "split":
        weights = {"lambda_p": LAMBDA_P, "lambda_n": cell.lambda_n, "gamma": cell.gamma, "theta": cell.theta}
        return ["objective:", *(f"  {k}: {_num(v)}" for k, v in weights.items()), "  reduction: batch_token_mean"]
    if cell.objective == "sft":
        return ["objective:", "  reduction: batch_token_mean"]
    if cell.objective == "reps":
        null = ["# Their -m direction nulls the vector's component (null_it_out); steer's trains -m."]
        return [*(null if cell.null_out else []), "objective:", "  simpo_scaler: 1.0", "  length: sequence"]
    return []


def render(cell: Cell, model: str | None = None, layer: int | None = None) -> str:
    """The preset of ``cell``, on its own model or (``model``, ``layer``) with the same settings."""
    model, layer = model or cell.model, cell.layer if layer is None else layer
    where = f"{NAMES[cell.dataset]}, {NAMES[model]} at layer {layer}, {cell.form}, {cell.objective}"
    lines = [
        "# @package _global_",
        f"# The paper's settings: {where}. Generated by experiments/paper_presets.py; do not edit.",
        f"# Source: {SOURCE_REPO}@{COMMIT[:12]} {cell.source}",
    ]
    if model != cell.model:
        lines.append(f"# (the settings of {NAMES[cell.model]}, layer {cell.layer}, on the embedded model at its layer)")
    if cell.defaulted:
        lines.append(f"# Not in that file, so its hparams class's default: {', '.join(cell.defaulted)}.")
    lines += [
        "defaults:",
        f"  - override /dataset: {cell.dataset}",
        f"  - override /model: {model}",
        f"  - override /intervention: {cell.form}",
        f"  - override /objective: {cell.objective}",
        "  - override /judge/select: fixed",
        "  - _self_",
        "# Presets set keys the command line does not name: their runs live apart (docs/tuning.md).",
        f"output_root: {OUTPUT_ROOT}",
        f"layer: {layer}",
    ]
    if cell.objective != "diffmean":
        lines += train_lines(cell, model)
    if cell.form == "lora":
        lines += [
            f"# LoRA alpha {cell.alpha} in their file is stored but never applied (delta = x @ A @ B).",
            f"intervention:\n  rank: {cell.rank}",
        ]
    lines += objective_lines(cell)
    if cell.form != "vector":
        lines.append(f"sweep:\n  grid: {_flow(with_unit_multipliers(form_grid(cell.form)))}")
    lines += [
        "# Table 3: every apply_*.yaml steers at multiplier 1.0.",
        "judge:",
        "  select:",
        f"    m: {_num(APPLY_M)}",
    ]
    return "\n".join(lines) + "\n"


def presets() -> dict[Path, str]:
    """Every preset file's path and text: each cell, and each Gemma cell on the embedded model."""
    out = {PRESETS / f"{relative(c, c.model)}.yaml": render(c) for c in CELLS}
    for cell in CELLS:
        if cell.model == EMBEDDED_FROM:
            out[PRESETS / f"{relative(cell, EMBEDDED)}.yaml"] = render(cell, EMBEDDED, EMBEDDED_LAYER)
    return out


def stale(expected: dict[Path, str]) -> list[str]:
    """Preset files that are missing, differ from ``expected`` or are not expected at all."""
    present = set(PRESETS.rglob("*.yaml")) if PRESETS.is_dir() else set()
    wrong = [p for p, text in expected.items() if not p.is_file() or p.read_text() != text]
    return sorted(str(p.relative_to(REPO)) for p in {*wrong, *(present - set(expected))})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a preset is missing, stale or extra")
    args = parser.parse_args(argv)
    expected = presets()
    if args.check:
        bad = stale(expected)
        for path in bad:
            print(f"stale: {path} (run python experiments/paper_presets.py)", file=sys.stderr)
        return 1 if bad else 0
    for path in set(PRESETS.rglob("*.yaml")) - set(expected) if PRESETS.is_dir() else ():
        path.unlink()
    for path, text in expected.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(expected)} presets under {PRESETS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
