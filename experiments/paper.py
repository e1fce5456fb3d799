"""Recipes for the paper's R² tables and dynamics figures: the runs each needs, then its report.

    python experiments/paper.py TARGET [--preset dynamics|paper|smoke] [--datasets ...] [--data DIR]
                                       [--protocol steer|paper] [--dry-run | --plan] [HYDRA OVERRIDES...]
    make TARGET [DATASETS=...] [ARGS="overrides"]

Every target uses the same runs: Hydra multiruns of ``run.py`` over the preset's experiments
(``dynamics``: the intervention forms × trained objectives of ``steer/conf/experiment/dynamics.yaml`` and
DiffMean on vectors, ``dynamics_diffmean.yaml``; ``paper``: the same at the paper's scale for both
paper models, ``paper.yaml`` and ``paper_diffmean.yaml``; ``smoke``: ``smoke.yaml``) for each data
set of ``--datasets``, with stages train → sweep → fit (table3 and all: then judge, ``judge=local``
by default; ``--protocol paper`` judges every method at m = 1, as the paper's Table 3). Finished
runs are skipped (``stages.json``), so after the first target the others cost only their report;
``all`` runs them once and writes every report. ``--data DIR`` reads the data sets from a local copy laid out as
``../shared/data``. ``--plan`` prints what the runs would cost (jobs, tokens, GPU-hours, judge
calls and dollars) and runs nothing.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
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
TARGETS = {**RECIPES, "all": "every table and figure above, from one set of runs"}


@dataclass(frozen=True)
class Preset:
    experiments: tuple[str, ...]
    datasets: str  # the default of --datasets
    axbench_concepts: int | None = None  # AxBench runs: concept_id=range(n); None = the config's concept


PRESETS = {
    "dynamics": Preset(("dynamics", "dynamics_diffmean"), "sentiment"),
    "paper": Preset(("paper", "paper_diffmean"), "psychopathy,powerseeking,axbench", axbench_concepts=10),
    "smoke": Preset(("smoke",), "sentiment"),
}
EXPERIMENTS = PRESETS["dynamics"].experiments
# Overrides a recipe adds to the shared multiruns: Table 3 also runs the judge stage (the finished
# train, sweep and fit stages are skipped); later overrides win. Nothing here may set a fingerprinted
# key (the judge's lengths live in the presets): that would give Table 3 run directories of its own
# and train again what Table 2 trained.
EXTRA = {"table3": ["stages=[train,sweep,fit,judge]"]}
EXTRA["all"] = EXTRA["table3"]
# How the judged multiplier of each run is chosen (--protocol, `make table3 PROTOCOL=...`): steer's
# own (the runs' judge.select, fit by default) or the paper's, m = 1 fixed for every method (the
# authors' apply_*.yaml files). judge.select.m is a fingerprinted key, so the paper protocol's runs
# are variants with directories of their own: both protocols' runs coexist, and Table 3 labels
# each row with how its m was chosen.
PROTOCOLS = {"steer": [], "paper": ["judge/select=fixed", "judge.select.m=1"]}
# Where each data set lies in a local copy laid out as ../shared/data.
LOCAL_DATA = {
    "psychopathy": "anthropic-evals/persona/psychopathy.jsonl",
    "powerseeking": "bipo/power-seeking",
    "axbench": "axbench/concept10/prod_9b_l20_v1",
}


def dataset_overrides(dataset: str, preset: Preset, data: Path | None) -> list[str]:
    """The overrides one data set needs beyond ``dataset=NAME``: its local path, AxBench's concepts."""
    extra = []
    if data is not None and dataset in LOCAL_DATA:
        extra.append(f"dataset.path={data / LOCAL_DATA[dataset]}")
    if dataset == "axbench" and preset.axbench_concepts:
        extra.append(f"dataset.concept_id=range({preset.axbench_concepts})")
    return extra


def multiruns(preset: Preset, datasets: str, data: Path | None) -> list[tuple[str, list[str]]]:
    """(experiment, overrides) of every multirun: one per experiment over all data sets when they
    need nothing else, else one per experiment and data set."""
    names = datasets.split(",")
    extras = {d: dataset_overrides(d, preset, data) for d in names}
    if not any(extras.values()):
        return [(e, [f"dataset={datasets}"]) for e in preset.experiments]
    return [(e, [f"dataset={d}", *extras[d]]) for e in preset.experiments for d in names]


def commands(
    target: str,
    datasets: str,
    overrides: list[str],
    preset: str = "dynamics",
    data: Path | None = None,
    protocol: str = "steer",
) -> list[list[str]]:
    """The multiruns, then the report command(s), for ``target``; the judged targets (table3, all)
    choose their multipliers by ``protocol`` (``PROTOCOLS``)."""
    judged = [*EXTRA[target], *PROTOCOLS[protocol]] if target in EXTRA else []
    runs = [
        [sys.executable, "run.py", "-m", f"experiment={name}", *extra, *judged, *overrides]
        for name, extra in multiruns(PRESETS[preset], datasets, data)
    ]
    outputs = output_root(PRESETS[preset], overrides)
    reports = []
    for name in RECIPES if target == "all" else [target]:
        report = [sys.executable, "-m", "steer.report", name, "--outputs", outputs]
        if name.startswith("fig"):
            for dataset in datasets.split(","):
                report += ["--dataset", dataset]
        reports.append(report)
    return [*runs, *reports]


def output_root(preset: Preset, overrides: list[str]) -> str:
    """Where the preset's runs land, so the report reads them: the last ``output_root=`` override,
    else the ``output_root`` of the preset's first experiment (``outputs/paper``, ``outputs/smoke``)."""
    roots = [o.split("=", 1)[1] for o in overrides if o.startswith("output_root=")]
    if roots:
        return roots[-1]
    from steer.stages import compose_config

    return str(compose_config([f"experiment={preset.experiments[0]}"]).output_root)


# Judge calls per steered answer, by data set loader (Psychopathy is scored by PrefOdds, no judge):
# PowerSeeking one 1-4 rating; AxBench concept, instruction relevance and fluency.
JUDGE_CALLS = {"powerseeking": 1, "axbench": 3}


def job_overrides(experiment: str, extra: list[str], overrides: list[str]) -> list[list[str]]:
    """Every job of one multirun, as Hydra's basic sweeper expands it (the experiment's sweeper
    params, then the command line's sweeps), each a list of plain overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from steer.stages import compose_config

    given = [*extra, *overrides]
    keys = {o.split("=", 1)[0].lstrip("+~") for o in given}
    params = compose_config([f"experiment={experiment}"], return_hydra_config=True).hydra.sweeper.params or {}
    swept = [f"{k}={v}" for k, v in params.items() if k not in keys]
    parsed = OverridesParser.create().parse_overrides([*swept, *given])
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return [[f"experiment={experiment}", *job] for job in batch]


def plan_text(runs: list[tuple[str, list[str]]], overrides: list[str], judge_multipliers: int) -> str:
    """What the multiruns ``runs`` would cost: every job composed as run.py would, its data read
    and tokenised (the model's tokenizer when it loads offline, else the embedded one's)."""
    import json

    from omegaconf import OmegaConf

    from steer.core.models import EMBEDDED_SOURCE, load_tokenizer
    from steer.objectives import get_objective
    from steer.runtime.plan import Hardware, JobSpec, JudgePrice, estimate, format_memory, format_plan
    from steer.stages import compose_config
    from steer.stages.data import load_dataset, needs_own_answers

    tokenizers, tokens, sizes, jobs, notes = {}, {}, {}, [], set()
    for experiment, extra in runs:
        for job in job_overrides(experiment, extra, overrides):
            cfg = compose_config(job)
            model = cfg.model.name
            if model not in sizes:
                sizes[model] = size_of(cfg.model)
            if model not in tokenizers:
                try:
                    tokenizers[model] = load_tokenizer(cfg.model.source, local_files_only=True)  # never the hub
                except OSError:
                    tokenizers[model] = load_tokenizer(EMBEDDED_SOURCE)
                    notes.add(f"{model}: tokens counted with the embedded SmolLM2 tokenizer (its own is not local)")
            dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
            key = (model, json.dumps(dataset, sort_keys=True))
            if key not in tokens:
                splits = load_dataset(cfg)
                counted = pair_tokens(tokenizers[model], splits, dataset.get("instruction"), cap(dataset))
                tokens[key] = (counted, needs_own_answers(splits))
            (train, test), generate = tokens[key]
            generation = dataset.get("generation") or {}
            jobs.append(
                JobSpec(
                    name=dataset["name"],
                    model=model,
                    params=sizes[model].active_params,
                    train=train,
                    test=test,
                    grid=len(cfg.sweep.grid),
                    epochs=int(cfg.train.epochs) if cfg.get("train") else 0,  # an estimator has no train node
                    trained=get_objective(cfg.objective.name).trains,
                    generate_negatives=generate,
                    max_new_tokens=cap(dataset),
                    generation_batch=generation.get("batch_size", 16),
                    judge_calls_per_answer=JUDGE_CALLS.get(dataset["loader"], 0),
                    judge_multipliers=judge_multipliers,
                    size=sizes[model],
                    layer=int(cfg.layer),
                    sweep_batch=int(cfg.sweep.batch_size),
                    train_batch=int(cfg.train.batch_size) if cfg.get("train") else JobSpec.train_batch,
                )
            )
    notes.add("AxBench A_n (the model's own answer, not generated yet) counted as long as A_p, at most max_new_tokens")
    notes.add(f"judge generation: {judge_multipliers} steered answer(s) of max_new_tokens per test prompt")
    notes.add("FLOPs count the parameters a token passes through (a mixture of experts: its routed experts only)")
    hw, judge = Hardware(), JudgePrice()
    return format_plan(estimate(jobs, hw, judge), hw, judge, sorted(notes)) + "\n\n" + format_memory(jobs, hw)


def size_of(model_cfg):
    """The model's ``ModelSize`` from ``model.shapes`` (steer/conf/model/*.yaml) or, without them, its own
    config (local or embedded): nothing is downloaded."""
    from omegaconf import OmegaConf

    from steer.core.models import config_from_shapes, load_config, model_size

    shapes = model_cfg.get("shapes")
    if shapes is not None:
        return model_size(config_from_shapes(OmegaConf.to_container(shapes)))
    try:
        return model_size(load_config(model_cfg.source, local_files_only=True))
    except OSError as err:
        raise SystemExit(f"plan: model={model_cfg.name} has no local config and no model.shapes: {err}") from None


def cap(dataset: dict) -> int:
    """The length cap of generated answers (``dataset.generation.max_new_tokens``, default 128)."""
    return (dataset.get("generation") or {}).get("max_new_tokens", 128)


def pair_tokens(tokenizer, splits, instruction: str | None, max_new_tokens: int) -> tuple[list, list]:
    """Token counts of every pair of ``splits`` as steer scores it (rendered prompt, answers); an A_n
    still to be generated counts as long as A_p, at most ``max_new_tokens``."""
    from steer.pairs import render_prompt
    from steer.runtime.plan import PairTokens

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731

    def one(pair) -> PairTokens:
        positive = count(pair.positive)
        negative = count(pair.negative) if pair.negative is not None else min(positive, max_new_tokens)
        return PairTokens(count(render_prompt(tokenizer, pair.prompt, instruction)), positive, negative)

    return [one(p) for p in splits.train], [one(p) for p in splits.test]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which runs: preset, data sets, local data."""
    parser.add_argument("--preset", choices=list(PRESETS), default="dynamics", help="the runs (default dynamics)")
    parser.add_argument("--datasets", help="comma-separated dataset= choices (default: the preset's)")
    parser.add_argument("--data", type=Path, help="a local copy of the data sets laid out as ../shared/data")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The options and the Hydra overrides (key=value) after them; anything else is a usage error."""
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(f"not a Hydra override (key=value): {bad[0]}")
    if args.data is not None and not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder (a local copy of the data sets laid out as ../shared/data)")
    known = set(compose_choices("dataset"))
    unknown = [d for d in (args.datasets or "").split(",") if d and d not in known]
    if unknown:
        parser.error(f"--datasets: unknown data set {unknown[0]!r} (choose from {', '.join(sorted(known))})")
    return args, overrides


def compose_choices(group: str) -> list[str]:
    """The options of a config group: the file names under steer/conf/<group>/ and the schemas
    (``steer.stages.schema``) of that group."""
    from steer.stages.schema import groups

    return [p.stem for p in (REPO / "steer" / "conf" / group).glob("*.yaml")] + list(groups().get(group, {}))


def run_plan(args: argparse.Namespace, overrides: list[str]) -> int:
    """Print what the preset's runs cost; a config that does not compose is one line and exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    preset = PRESETS[args.preset]
    try:
        print(
            plan_text(multiruns(preset, args.datasets or preset.datasets, args.data), overrides, args.judge_multipliers)
        )
    except (HydraException, OmegaConfBaseException, ValueError, OSError) as err:
        print(f"plan: {err}", file=sys.stderr)
        return 2
    return 0


def plan_main(argv: list[str] | None = None) -> int:
    """``steer plan``: what the runs of every table and figure cost, nothing run."""
    parser = argparse.ArgumentParser(prog="steer plan", description=plan_main.__doc__.split(":", 1)[1].strip())
    add_run_arguments(parser)
    parser.add_argument("--judge-multipliers", type=int, default=1, help="steered generations per judged test prompt")
    args, overrides = parse(parser, argv)
    print(f"# {TARGETS['all']} (preset {args.preset})")
    return run_plan(args, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=list(TARGETS), help="; ".join(f"{k}: {v}" for k, v in TARGETS.items()))
    add_run_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--plan", action="store_true", help="print what the runs cost (tokens, GPU-hours, judge)")
    parser.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="steer",
        help="table3's multipliers: steer (each run's judge.select) or paper (m = 1 for every method)",
    )
    parser.add_argument(
        "--judge-multipliers", type=int, default=1, help="steered generations per judged test prompt (plan only)"
    )
    args, overrides = parse(parser, argv)
    preset = PRESETS[args.preset]
    datasets = args.datasets or preset.datasets
    print(f"# {TARGETS[args.target]} (preset {args.preset})")
    if args.plan:
        return run_plan(args, overrides)
    for command in commands(args.target, datasets, overrides, args.preset, args.data, args.protocol):
        print("+ " + shlex.join(command), flush=True)
        if not args.dry_run:
            done = subprocess.run(command, cwd=REPO)
            if done.returncode != 0:
                print(f"experiments/paper.py: step failed (exit {done.returncode}): {shlex.join(command)}")
                return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
