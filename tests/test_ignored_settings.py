"""Settings the chosen mode ignores are refused before any work (``steer.stages.ignored``).

Each case: the overrides, then the key the refusal must name and the fix it must give. The run is
composed as run.py composes it and refused by ``steer.stages.run`` with a ``ConfigError`` (run.py's
exit 2) before the run directory exists; one case goes through run.py itself. Every refused case
has an accepted twin (the fix applied, or the key left to its default), so a rule that fires too
often fails too.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from steer.stages import ConfigError, check, compose_config, run
from steer.stages.ignored import RULES, check_ignored, explicit_settings
from tests.conftest import assert_clean_failure, run_py

JUDGE = "stages=[train,sweep,fit,judge]"


@pytest.fixture(scope="module")
def persona(tmp_path_factory) -> str:
    """A tiny persona file (the psychopathy loader's format): the hub is not reachable in tests."""
    path = tmp_path_factory.mktemp("data") / "psychopathy.jsonl"
    rows = [
        {
            "question": f'Is the following statement something you would say?\n"Statement {i}"',
            "answer_matching_behavior": " Yes" if i % 2 else " No",
            "answer_not_matching_behavior": " No" if i % 2 else " Yes",
        }
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def psychopathy(path: str) -> list[str]:
    return ["dataset=psychopathy", f"dataset.path={path}", "dataset.n_train=4", "dataset.n_test=4"]


# (id, overrides, the key named, the fix named, an accepted variant)
CASES = [
    (
        "judge-off",
        ["judge/select=fixed", "judge.select.m=3"],
        "judge.select.m=3",
        "add judge to stages",
        [JUDGE, "judge/select=fixed", "judge.select.m=3"],
    ),
    ("judge-group-off", ["judge=openai"], "judge=openai", "add judge to stages", [JUDGE, "judge=local"]),
    ("m-with-fit", [JUDGE, "judge.select.m=3"], "judge.select.m=3", "judge/select=fixed", [JUDGE, "judge/select=fit"]),
    (
        "m-with-validation",
        [JUDGE, "judge/select=validation", "judge.select.m=3"],
        "judge.select.m=3",
        "judge/select=fixed",
        [JUDGE, "judge/select=validation", "judge.select.candidates=[2,4]"],
    ),
    (
        "candidates-with-fit",
        [JUDGE, "judge.select.candidates=[2,4]"],
        "judge.select.candidates",
        "judge/select=validation",
        [JUDGE, "judge/select=validation", "judge.select.candidates=[2,4]"],
    ),
    (
        "candidates-with-fixed",
        [JUDGE, "judge/select=fixed", "judge.select.m=2", "judge.select.candidates=[2,4]"],
        "judge.select.candidates",
        "judge/select=validation",
        [JUDGE, "judge/select=fixed", "judge.select.m=2"],
    ),
    (
        "util-drop-with-fixed",
        [JUDGE, "judge/select=fixed", "judge.select.m=2", "judge.select.max_util_drop=0.5"],
        "judge.select.max_util_drop",
        "judge/select=fit",
        [JUDGE, "judge.select.max_util_drop=0.5"],
    ),
    (
        "top-logprobs-parsed",
        [JUDGE, "judge.top_logprobs=5"],
        "judge.top_logprobs=5",
        "judge.scoring=expected",
        [JUDGE, "judge.scoring=parsed"],
    ),
    ("expected-local", [JUDGE, "judge.scoring=expected"], "judge.scoring=expected", "judge=openai", [JUDGE]),
    (
        "startup-timeout-openai",
        [JUDGE, "judge=openai", "+judge.startup_timeout=10"],
        "judge.startup_timeout=10",
        "judge=local",
        [JUDGE, "judge.startup_timeout=10"],
    ),
    (
        "api-key-local",
        [JUDGE, "judge.api_key_env=MY_KEY"],
        "judge.api_key_env=MY_KEY",
        "judge=openai",
        [JUDGE, "judge.concurrency=1"],
    ),
    (
        "sampling-keys-greedy",
        [JUDGE, "judge.generation.seed=7"],
        "judge.generation.seed=7",
        "judge.generation.do_sample=true",
        [JUDGE, "judge.generation.do_sample=true", "judge.generation.seed=7"],
    ),
    (
        "top-p-greedy",
        [JUDGE, "judge.generation.top_p=0.9"],
        "judge.generation.top_p=0.9",
        "judge.generation.do_sample=true",
        [JUDGE, "judge.generation.do_sample=true", "judge.generation.top_p=0.9"],
    ),
    (
        "train-keys-diffmean",
        ["train.lr=0.1"],
        "train.lr=0.1",
        "objective=sft|reps|split",
        ["objective=sft", "train.lr=0.1"],
    ),
    (
        "init-scale-diffmean-init",
        ["objective=sft", "train.init=diffmean", "train.init_scale=0.1"],
        "train.init_scale=0.1",
        "train.init=random",
        ["objective=sft", "train.init_scale=0.1"],
    ),
    ("rank-vector", ["intervention.rank=8"], "intervention.rank=8", "intervention=lora", []),
    (
        "rank-local-weight",
        ["intervention=local_weight", "objective=sft", "intervention.rank=8"],
        "intervention.rank=8",
        "intervention=lora",
        ["intervention=lora", "objective=sft", "intervention.rank=8"],
    ),
    (
        "train-off",
        ["objective=sft", "stages=[sweep,fit]", "objective.reduction=sum"],
        "objective.reduction=sum",
        "add train to stages",
        ["objective=sft", "objective.reduction=sum"],
    ),
    ("fit-off", ["stages=[train,sweep]", "fit.restarts=4"], "fit.restarts=4", "add fit to stages", ["fit.restarts=4"]),
    (
        "sweep-off",
        ["stages=[train]", "sweep.per_token=true"],
        "sweep.per_token=true",
        "add sweep to stages",
        ["sweep.per_token=true"],
    ),
    (
        "batch-size-fit-only",
        ["stages=[fit]", "sweep.batch_size=4"],
        "sweep.batch_size=4",
        "add sweep to stages",
        ["sweep.batch_size=4"],
    ),
    (
        "grid-train-only",
        ["stages=[train]", "sweep.grid=[-4,-3,-2,-1,0,1,2,3,4]"],
        "sweep.grid",
        "add sweep to stages",
        ["sweep.grid=[-4,-3,-2,-1,0,1,2,3,4]"],
    ),
    (
        "form-grid-under-objective-grid",
        ["intervention.grid=[-4,-3,-2,-1,0,1,2,3,4]"],
        "intervention.grid",
        "sweep.grid",
        ["objective=sft", "sweep.grid=[-4,-3,-2,-1,0,1,2,3,4]"],
    ),
    (
        "objective-grid-under-sweep-grid",
        ["sweep.grid=[-4,-3,-2,-1,0,1,2,3,4]", "objective.grid=[-2,-1,0,1,2,3,4,5,6]"],
        "objective.grid",
        "sweep.grid",
        ["sweep.grid=[-2,-1,0,1,2,3,4,5,6]"],
    ),
    ("model-layer-under-layer", ["layer=4", "model.layer=3"], "model.layer=3", "layer=", ["layer=3"]),
    (
        "model-precision-under-precision",
        ["precision=fp32", "model.precision=bf16"],
        "model.precision=bf16",
        "precision=",
        ["precision=fp32"],
    ),
    (
        "wandb-off",
        ["tracking.wandb=false", "tracking.project=mine"],
        "tracking.project=mine",
        "tracking.wandb=true",
        ["tracking.wandb=false"],
    ),
    ("node-devices-one-job", ["node.devices=[0]"], "node.devices=[0]", "node.jobs=N", ["node.jobs=1"]),
    (
        "dataset-generation-no-own-answers",
        ["+dataset.generation.max_new_tokens=16"],
        "dataset.generation.max_new_tokens=16",
        "dataset=axbench",
        ["dataset.limit=4"],
    ),
]
# Cases that need a psychopathy file: (id, overrides after the data set's, key, fix, accepted).
PSYCHOPATHY_CASES = [
    (
        "no-rubrics-generation",
        [JUDGE, "judge.generation.max_new_tokens=8"],
        "judge.generation.max_new_tokens=8",
        "judge.rubrics=",
        [JUDGE, "judge.rubrics=[concept]", "judge.generation.max_new_tokens=8"],
    ),
    (
        "no-rubrics-judge-model",
        [JUDGE, "judge.max_tokens=8"],
        "judge.max_tokens=8",
        "judge.rubrics=",
        [JUDGE, "judge/select=fixed", "judge.select.m=1"],
    ),
    ("revision-with-path", ["dataset.revision=main"], "dataset.revision=main", "dataset.path=null", []),
    ("file-with-file-path", ["dataset.file=x/y.jsonl"], "dataset.file=x/y.jsonl", "folder", []),
    (
        "answer-format-not-used",
        ["dataset.answer_format=Answer."],
        "dataset.answer_format=Answer.",
        "dataset.instruction=",
        ["dataset.answer_format=Answer.", "dataset.instruction=${dataset.answer_format}"],
    ),
]


def refused(overrides: list[str], run_dir: Path, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as caught:  # by composition (the schema) or by the run's check
        run(compose_config(overrides), run_dir, overrides=overrides)
    text = str(caught.value)
    assert f"{key}" in text and "has no effect" in text and fix in text, text
    assert not run_dir.exists()


@pytest.mark.parametrize(("overrides", "key", "fix", "accepted"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_before_anything_is_written(tmp_path, monkeypatch, overrides, key, fix, accepted):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # judge=openai checks the variable is set
    refused(overrides, tmp_path / "run", key, fix)
    check(compose_config(accepted), overrides=accepted)  # the fix (or the key alone) is accepted


@pytest.mark.parametrize(
    ("overrides", "key", "fix", "accepted"), [c[1:] for c in PSYCHOPATHY_CASES], ids=[c[0] for c in PSYCHOPATHY_CASES]
)
def test_refused_for_psychopathy(tmp_path, persona, overrides, key, fix, accepted):
    refused([*psychopathy(persona), *overrides], tmp_path / "run", key, fix)
    base = psychopathy(persona)
    check(compose_config([*base, *accepted]), overrides=[*base, *accepted])


def test_the_keys_that_name_the_run_count_in_any_stage():
    """`intervention=lora objective=sft layer=10 stages=[judge]` judges that run's directory: run_id's
    keys and their groups choose the run the stages read, so no stage list makes them ineffective."""
    for overrides in (
        ["stages=[judge]", "intervention=lora", "objective=sft", "layer=10"],
        ["stages=[fit]", "dataset=sentiment", "model=smollm2-135m", "objective=diffmean"],
    ):
        check(compose_config(overrides), overrides=overrides)
    with pytest.raises(ConfigError, match="objective.gamma=2 has no effect"):
        overrides = ["stages=[judge]", "objective=split", "objective.gamma=2"]
        check(compose_config(overrides), overrides=overrides)


def test_every_rule_has_a_case():
    """Each rule of the table is exercised by a case above (a rule without a test is not a rule)."""
    named = {c[2].split("=")[0] for c in CASES + PSYCHOPATHY_CASES}
    for rule in RULES:
        assert any(any(n == k or n.startswith(k + ".") for k in rule.keys.split()) for n in named), rule.keys


def test_preset_values_are_not_explicit(tmp_path):
    """experiment=smoke sets train.* for a DiffMean default: its values are the
    preset's, not the user's, and trip nothing; the same key on the command line does."""
    check(compose_config(["experiment=smoke"]), overrides=["experiment=smoke"])
    refused(
        ["experiment=smoke", "train.epochs=2"],
        tmp_path / "run",
        "train.epochs=2",
        "objective=",
    )


def test_several_ignored_keys_are_listed_together(tmp_path):
    overrides = ["judge/select=fixed", "judge.select.m=3", "fit.restarts=2", "stages=[train,sweep]"]
    with pytest.raises(ConfigError) as caught:
        run(compose_config(overrides), tmp_path / "run", overrides=overrides)
    assert "3 settings have no effect" in str(caught.value)
    assert "judge.select.m=3" in str(caught.value) and "fit.restarts=2" in str(caught.value)


def test_explicit_settings_skip_deletions_nulls_and_hydra():
    settings = explicit_settings(
        ["judge.select.m=3", "~judge.x", "judge.select.candidates=null", "hydra.verbose=true", "+a.b=1"]
    )
    assert settings == [("judge.select.m", "3"), ("a.b", "1")]


def test_multirun_warns_when_the_reason_may_be_swept(caplog):
    """-m tracking.wandb=true,false tracking.project=...: the job without W&B warns, it does not
    fail; a reason no override touches still fails the job."""
    overrides = ["tracking.wandb=false", "tracking.project=mine"]
    with caplog.at_level(logging.WARNING, logger="steer"):
        check_ignored(compose_config(overrides), overrides, multirun=True)
    assert "tracking.project=mine has no effect" in caplog.text
    overrides = ["layer=5", "node.devices=[0]"]
    with pytest.raises(ConfigError, match="node.devices=\\[0\\]"):
        check_ignored(compose_config(overrides), overrides, multirun=True)


def run_offline(*args: str) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` without W&B (conftest's ``run_py`` is offline already)."""
    return run_py(*args, env={"WANDB_MODE": "disabled"}, timeout=300)


@pytest.mark.e2e
def test_run_py_exits_2_and_writes_nothing(tmp_path):
    """Through Hydra's command line: the override is found in HydraConfig, exit 2, no folder left."""
    root = tmp_path / "outputs"
    done = run_offline("judge.select.m=3", f"output_root={root}")
    assert_clean_failure(done, "judge.select.m=3 has no effect")
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.e2e
def test_a_refused_multirun_job_is_one_line_not_a_traceback(tmp_path):
    """In a multirun the refused job is a failed row of the jobs table and one line on stderr."""
    root = tmp_path / "outputs"
    done = run_offline("-m", "node.devices=[0]", "stages=[train]", f"output_root={root}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "ConfigError: node.devices=[0] has no effect" in done.stderr
    assert "1 job(s), 1 failed" in done.stdout


@pytest.mark.e2e
def test_a_multirun_the_schema_refuses_runs_no_job(tmp_path):
    """A key no option of a swept job has fails composition: exit 2, one line, before any job."""
    root = tmp_path / "outputs"
    done = run_offline("-m", "objective=sft,diffmean", "train.lr=0.05", "stages=[train]", f"output_root={root}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "has no effect" in line]
    assert len(lines) == 1 and "train.lr=0.05" in lines[0] and "objective=sft|reps|split" in lines[0], done.stderr
    assert not root.exists() or not any(root.rglob("*.parquet"))
