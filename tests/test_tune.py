"""Tuning: a trial's target (validation only), the resumable Optuna study through run.py, the
paired bootstrap and the comparison report."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from steer import rundir
from steer.analysis.front import front_value
from steer.analysis.paired import BETTER, TIE, WORSE, difference_interval, paired_replicates, verdict
from steer.pairs import PairRecord
from steer.report.compare import build_compare
from steer.stages import ConfigError, compose_config
from steer.stages.tune import check_tune, target_of
from tests.conftest import REPO, assert_clean_failure, load_experiment, python, run_py, start, wait_for

GRID = [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0]


# ---------------------------------------------------------------- the paired bootstrap


def test_paired_bootstrap_of_a_constant_shift_is_exact():
    """B = A + 0.5 on every example: every paired replicate's difference is 0.5, whatever the draw."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + 0.5
    samples = paired_replicates(30, lambda rows: {"a": a[rows].mean(), "b": b[rows].mean()}, 200, seed=1)
    interval = difference_interval(samples["b"], samples["a"])
    assert interval.lo == pytest.approx(0.5) and interval.hi == pytest.approx(0.5)
    assert verdict(interval) == BETTER and verdict(difference_interval(samples["a"], samples["b"])) == WORSE
    # unpaired, the same two runs overlap: the shift is small against the spread of the examples
    assert percentile_width(samples["a"]) > 0.5


def percentile_width(samples) -> float:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return hi - lo


def test_paired_bootstrap_interval_matches_the_normal_theory():
    """Differences d ~ N(0.3, 1) over 400 examples: the interval is mean(d) ± 1.96·sd/√n (to ~10 %)."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=400)
    b = a + rng.normal(0.3, 1.0, size=400)
    samples = paired_replicates(400, lambda rows: {"a": a[rows].mean(), "b": b[rows].mean()}, 2000, seed=3)
    interval = difference_interval(samples["b"], samples["a"])
    d = b - a
    half = 1.96 * d.std() / np.sqrt(d.size)
    assert (interval.lo + interval.hi) / 2 == pytest.approx(d.mean(), abs=0.1 * half)
    assert (interval.hi - interval.lo) / 2 == pytest.approx(half, rel=0.1)
    assert verdict(interval) == BETTER
    same = paired_replicates(
        400, lambda rows: {"a": a[rows].mean(), "c": (a + rng.normal(0, 1e-3))[rows].mean()}, 500, 4
    )
    assert verdict(difference_interval(same["c"], same["a"])) == TIE


# ---------------------------------------------------------------- the trial's target


def sweep_frame(shift: dict[str, float], n: int = 4) -> pd.DataFrame:
    """PrefOdds = m + shift[split] + noise, UtilOdds = −m²/4 (within δ = 1 while |m| ≤ 2)."""
    rng = np.random.default_rng(0)
    rows = []
    for split, s in shift.items():
        for i in range(n):
            for m in GRID:
                pref = m + s + 0.1 * rng.normal()
                rows.append({"split": split, "example_id": f"{split}{i}", "m": m, "loss_pos": 1.0, "loss_neg": 1.0})
                rows[-1].update(pref_odds=pref, util_odds=-(m**2) / 4)
    return pd.DataFrame(rows)


def tune_cfg(*extra: str):
    return compose_config(["dataset.validation=2", "tune.split=validation", "tune.value=swept", *extra])


def test_the_target_reads_no_test_row(tmp_path):
    """The trial's number is the same whatever the test rows and test fits hold, and moves with validation."""
    frame = sweep_frame({"train": 0.0, "validation": 1.0, "test": 5.0})
    rundir.write_sweep(tmp_path, frame)
    cfg = tune_cfg()
    best = target_of(cfg, tmp_path)
    assert best.m == 2.0 and best.pref == pytest.approx(
        frame.query("split == 'validation' and m == 2").pref_odds.mean()
    )
    garbled = frame.copy()
    garbled.loc[garbled.split == "test", ["pref_odds", "util_odds"]] = np.nan
    rundir.write_sweep(tmp_path, garbled)
    assert target_of(cfg, tmp_path) == best
    rundir.write_sweep(tmp_path, garbled[garbled.split != "test"])
    assert target_of(cfg, tmp_path) == best
    # the fitted value reads the validation fit alone (a fit.json without test fits)
    fit = {kind: {"validation": {"params": params}} for kind, params in linear_fits().items()}
    # UtilOdds = 4/(1 + m²/4) − 4 stays within δ = 1 of U(0) = 0 while |m| ≤ 2/√3
    assert front_value(garbled, fit, "validation", 1.0, "fit").m == pytest.approx(2 / np.sqrt(3), abs=2e-3)


def linear_fits() -> dict:
    from steer.analysis.fit import NEUTRAL_DECAY

    flat = {**NEUTRAL_DECAY, "p_pos": 0.0, "p_neg": 0.0}
    decay = {**NEUTRAL_DECAY, "L_pos": 4.0, "L_neg": 4.0}
    return {"pref": {"alpha": 1.0, "beta": 1.0, "b": 0.0, **flat}, "util": {"beta": 4.0, "b": -4.0, **decay}}


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["tune.split=test"], "never on test"),
        (["dataset.validation=0"], "dataset.validation is 0"),
        (["tune.delta=-1"], "tune.delta"),
        (["tune.value=best"], "tune.value"),
        (["stages=[train]"], "reads the sweep stage"),
    ],
)
def test_tuning_settings_that_cannot_work_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        check_tune(tune_cfg(*overrides))


def study_of(command: list[str]) -> tuple:
    """(config, sweeps) of a campaign's ``run.py -m OVERRIDES``: the config its plain overrides
    compose (with Hydra's), and the parsed sweep (e.g. ``choice(8,16)``) of each key it sweeps."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = command[command.index("-m") + 1 :]
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [(o.key_or_group, o.value()) for o in parsed if o.is_sweep_override()]
    plain = [text for text, o in zip(overrides, parsed, strict=True) if not o.is_sweep_override()]
    return compose_config(plain, return_hydra_config=True), sweeps


def test_campaign_commands(monkeypatch):
    """experiments/tune.py: one study per form x trained objective plus DiffMean (vector); --quick
    caps each trial, DiffMean gets no training keys (not even the caller's), and the caller's
    overrides replace QUICK's."""
    monkeypatch.syspath_prepend(str(REPO / "experiments"))  # tune.py imports paper.py beside it
    campaign = load_experiment("tune")
    assert campaign.studies(["vector", "lora"])[-1] == ("vector", "diffmean") and len(campaign.studies(["lora"])) == 3
    longer = "train.epochs=choice(8,16)"
    command = campaign.study_command("psychopathy", "vector", "split", 6, Path("/d"), True, [longer, "seed=1"])
    cfg, sweeps = study_of(command)
    assert cfg.hydra.runtime.choices.experiment == "tune_vector_split" and cfg.hydra.sweeper.n_trials == 6
    assert cfg.dataset.name == "psychopathy" and cfg.dataset.path == "/d/anthropic-evals/persona/psychopathy.jsonl"
    assert [(key, sweep.list) for key, sweep in sweeps] == [("train.epochs", [8, 16])]  # the caller's, not QUICK's
    assert (
        cfg.seed == 1 and cfg.dataset.n_test == 24 and cfg.sweep.grid == yaml.safe_load(campaign.QUICK_GRID["vector"])
    )
    diffmean = campaign.study_command("sentiment", "vector", "diffmean", 6, None, True, [longer])
    cfg, sweeps = study_of(diffmean)
    assert sweeps == [] and not [o for o in diffmean if o.startswith("train")]
    assert cfg.sweep.grid == yaml.safe_load(campaign.QUICK_GRID["diffmean"]) and cfg.dataset.name == "sentiment"


# ---------------------------------------------------------------- the study through run.py

STUDY = [
    "experiment=tune_vector_diffmean",
    "layer=choice(12,15)",
    "hydra.sweeper.n_trials=2",
    "dataset.limit=2",
    "dataset.validation=2",
    f"sweep.grid=[{','.join(str(int(m)) for m in GRID)}]",
    "fit.restarts=1",
    "progress=false",
    "tracking.wandb=false",
]


def trials(db: Path) -> list[tuple[int, str]]:
    """The study's trials; none while Optuna has made the file but not yet its tables."""
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return []
            raise


def run_study(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The 2-trial ``STUDY`` through run.py into ``out``; asserts it exits 0 with both trials COMPLETE."""
    proc = run_py("-m", *STUDY, *extra, f"output_root={out}", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [state for _, state in trials(out / "tune" / "studies.db")] == ["COMPLETE", "COMPLETE"]
    return proc


@pytest.mark.e2e
def test_a_two_trial_study_end_to_end(tmp_path):
    """Two trials through run.py and the Optuna sweeper: a study in SQLite, the target of each on
    validation in metrics.json, and a best.yaml a later run composes as an experiment."""
    out = tmp_path / "out"
    run_study(out)
    best = json.loads(next((out / "tune" / "best").glob("*.json")).read_text())
    run_dir = Path(best["run_dir"])
    tune = rundir.read_metrics(run_dir)["tune"]
    assert tune["split"] == "validation" and tune["target"] == pytest.approx(best["value"])
    assert {r.split for r in rundir.read_pairs(run_dir)} == {"train", "validation", "test"}
    experiment = Path(best["experiment"])
    body = yaml.safe_load(experiment.read_text())
    assert body["layer"] == best["params"]["layer"] and body["dataset"]["limit"] == 2
    cfg = compose_config([f"hydra.searchpath=[file://{out / 'tune'}]", f"experiment={experiment.stem}"])
    assert cfg.layer == best["params"]["layer"] and cfg.objective.name == "diffmean"
    assert cfg.output_root == str(out / "tuned")


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_study_resumes_without_repeating_a_finished_trial(tmp_path):
    """Kill the sweep during its second trial; the same command completes exactly 2 trials, the
    first one's run untouched, the interrupted one's parameters run again."""
    out = tmp_path / "out"
    command = ["run.py", "-m", *STUDY, "layer=choice(12,13,14,15,16,17,18,19,20,21)", f"output_root={out}"]
    db = out / "tune" / "studies.db"
    proc = start(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = lambda: db.is_file() and [s for _, s in trials(db)][-1:] == ["RUNNING"] and len(trials(db)) == 2  # noqa: E731
    wait_for(second, proc, "the second trial", 900)
    wait_for(lambda: len(list(out.rglob(rundir.LEDGER))) == 2, proc, "the second trial's first stage", 900)
    proc.terminate()
    proc.wait(timeout=120)
    states = [s for _, s in trials(db)]
    assert states == ["COMPLETE", "RUNNING"], states
    finished = [p for p in out.rglob(rundir.LEDGER) if rundir.read_json(p).get("fit")]
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    rerun = python(*command, timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    states = [s for _, s in trials(db)]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1 and len(states) == 3
    with sqlite3.connect(db) as con:
        params = con.execute("SELECT trial_id, param_value FROM trial_params ORDER BY trial_id").fetchall()
    assert params[1][1] == params[2][1]  # the interrupted trial's layer ran again
    assert finished and all(p.stat().st_mtime_ns == stamps[p] for p in finished)  # finished before the kill


@pytest.mark.slow
@pytest.mark.e2e
def test_parallel_trials_through_the_node_launcher(tmp_path):
    """hydra.sweeper.n_jobs=2 with hydra/launcher=node node.jobs=2: the sweeper asks two trials at
    once and the node launcher runs them side by side, one CPU thread each, each in its own run
    directory; both are told back to the study."""
    out = tmp_path / "out"
    proc = run_study(out, "hydra.sweeper.n_jobs=2", "hydra/launcher=node", "node.jobs=2", "device=cpu")
    assert (proc.stdout + proc.stderr).count("device cpu, 1 CPU thread(s)") == 2
    ledgers = sorted(out.rglob(rundir.LEDGER))
    assert len(ledgers) == 2 and {p.parent.parent.name for p in ledgers} == {"layer12", "layer15"}
    spans = []
    for ledger in ledgers:
        stages = rundir.read_json(ledger)
        finish = {name: datetime.fromisoformat(s["finished"]).timestamp() for name, s in stages.items()}
        spans.append((finish["data"] - stages["data"]["seconds"], finish["fit"]))
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a  # the two trials ran at the same time


# ---------------------------------------------------------------- the comparison report


def write_tuned(root: Path, objective: str, shift: float, positives: list[str]) -> None:
    """A best trial of ``objective`` whose test PrefOdds are the shared base curve + ``shift``."""
    run_dir = root / "runs" / objective
    run_dir.mkdir(parents=True)
    config = {"model": {"name": "tiny"}, "layer": 3, "intervention": {"form": "vector"}}
    config.update(objective={"name": objective}, dataset={"name": "yesno", "loader": "psychopathy"})
    (run_dir / rundir.CONFIG).write_text(yaml.safe_dump(config))
    frame = sweep_frame({"test": 0.0}, n=len(positives))
    frame["pref_odds"] += shift
    rundir.write_sweep(run_dir, frame)
    records = [PairRecord("test", f"test{i}", "q", p, "No" if p == "Yes" else "Yes") for i, p in enumerate(positives)]
    rundir.write_pairs(run_dir, records)
    best = {"run_dir": str(run_dir), "trials_complete": 6, "value": 1.0, "params": {"lr": 0.1}, "distinct_complete": 5}
    (root / "tune" / "best").mkdir(parents=True, exist_ok=True)
    (root / "tune" / "best" / f"{objective}.json").write_text(json.dumps(best))


def test_compare_reports_paired_verdicts_and_balanced_accuracy(tmp_path):
    positives = ["Yes", "No", "No", "No"]
    write_tuned(tmp_path, "split", 1.0, positives)
    write_tuned(tmp_path, "sft", 0.0, positives)
    write_tuned(tmp_path, "reps", 1.0, positives)
    paths = build_compare(tmp_path, delta=1.0, bootstrap=200, seed=0)
    diffs = pd.read_csv(tmp_path / "reports" / "compare-differences.csv").set_index("comparison")
    assert diffs.loc["SPLIT − SFT", "difference"] == pytest.approx(1.0)
    assert diffs.loc["SPLIT − SFT", "difference_lo"] == pytest.approx(1.0)
    assert diffs.loc["SPLIT − SFT", "verdict"] == BETTER
    assert diffs.loc["SPLIT − RePS", "verdict"] == TIE
    values = pd.read_csv(tmp_path / "reports" / "compare.csv").set_index("objective")
    # at the chosen m = 2 every pair prefers A_p: accuracy 1 on both classes
    assert values.loc["split", "m"] == 2.0 and values.loc["split", "balanced_accuracy"] == 1.0
    assert values.loc["split", "test_lo"] <= values.loc["split", "test"] <= values.loc["split", "test_hi"]
    text = paths[0].read_text()
    assert any(p.suffix == ".png" for p in paths) and "Vanilla (m = 0)" in text and "better" in text


def asked(sampler, storage=None, n: int = 4) -> list[float]:
    """``n`` trials of an in-memory study (``storage``'s, continuing what it holds, else a new one)
    asked for a learning rate by ``sampler`` and told a value: the parameters it proposed."""
    import optuna
    from optuna.distributions import LogUniformDistribution

    storage = storage or optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="study", storage=storage, sampler=sampler, load_if_exists=True)
    lrs = []
    for _ in range(n):
        trial = study.ask({"lr": LogUniformDistribution(1e-5, 1e-1)})
        study.tell(trial, 0.0)
        lrs.append(trial.params["lr"])
    return lrs


def test_a_resumed_study_draws_new_parameters():
    """A study's sampler is seeded sampler.seed (else the run's seed) + trials held: a real study
    resumed after 4 trials proposes parameters it has not tried, where a sampler seeded as the first
    proposes the first trials' parameters again; the grid (no seed) is kept as it is."""
    import optuna
    from omegaconf import OmegaConf

    from steer.runtime.tuning import reseeded

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "seed": 3})
    storage = optuna.storages.InMemoryStorage()
    first = asked(reseeded(config, None, 0, 0), storage)
    resumed = asked(reseeded(config, None, 0, len(first)), storage)
    assert not set(resumed) & set(first)
    assert asked(reseeded(config, None, 0, 0)) == first  # seeded as the first: the first trials' parameters again
    assert asked(reseeded(config, None, 9, 0)) == first  # sampler.seed wins
    config.seed = None  # the run's seed instead
    assert asked(reseeded(config, None, 3, 0)) == first
    assert asked(reseeded(config, None, 4, 0)) != first
    grid = OmegaConf.create({"_target_": "optuna.samplers.GridSampler", "_partial_": True})
    assert reseeded(grid, "the sampler", 5, 2) == "the sampler"


@pytest.mark.e2e
def test_a_sweeper_with_no_target_is_refused_before_the_first_trial(tmp_path):
    """hydra/sweeper=optuna without a tune_* preset: no trial could return a value. Exit 2, one
    line naming tune.split and the presets, before anything is trained or written."""
    root = tmp_path / "outputs"
    args = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "objective=sft", "dataset.limit=8"]
    args += ["dataset.validation=4", f"output_root={root}"]
    done = run_py(*args, env={"WANDB_MODE": "disabled"})
    assert_clean_failure(done, "tune.split")
    lines = [line for line in done.stderr.splitlines() if "config error" in line]
    assert len(lines) == 1 and "tune.split" in lines[0] and "experiment=tune_" in lines[0], done.stderr
    assert not root.exists()
