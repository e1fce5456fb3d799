"""Scaling out: precision, device slots, presets, the cost plan, and the recipe's commands."""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
from pathlib import Path

import pytest

from steer.core.precision import model_dtype
from steer.runtime.devices import claim_slot, slot_plan
from steer.runtime.plan import Hardware, JobSpec, JudgePrice, PairTokens, estimate
from steer.stages import ConfigError, check, compose_config
from tests.conftest import load_experiment


def test_precision_values(caplog):
    assert model_dtype("fp32", "cuda") == "float32" and model_dtype("bf16", "cuda:1") == "bfloat16"
    with caplog.at_level(logging.WARNING, logger="steer"):
        assert model_dtype("bf16", "cpu") == "bfloat16"
    assert "bf16 on the CPU" in caplog.text
    with pytest.raises(ValueError, match="precision='fp16'"):
        model_dtype("fp16", "cuda")


def test_precision_is_validated_and_defaults_to_the_model():
    assert compose_config([]).precision == "fp32"
    assert compose_config(["model=gemma-2-9b-it"]).precision == "bf16"
    assert compose_config(["model=gemma-2-9b-it", "precision=fp32"]).precision == "fp32"
    with pytest.raises(ConfigError, match="precision='fp16' is not one of fp32, bf16"):
        check(compose_config(["precision=fp16"]))


def test_bf16_model_loads_in_bf16_and_scores_in_fp32(smol, tmp_path):
    """precision=bf16: the run's model is bf16, the log-likelihoods stay float and close to fp32."""
    import torch

    from steer.core.metrics import encode_pair, pair_logprobs
    from steer.stages.context import RunContext

    ctx = RunContext(compose_config(["precision=bf16", "device=cpu"]), tmp_path)
    assert ctx.model.dtype == torch.bfloat16
    model, tok = smol
    pair = encode_pair(tok, "Is the sky blue? Answer:", "Yes, it is blue.", "No, it is green.")
    with torch.no_grad():
        full, half = pair_logprobs(model, [pair]), pair_logprobs(ctx.model, [pair])
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, rtol=0.1, atol=0.5), (full, half)


def test_slot_plan():
    assert slot_plan(0, 4, [0, 1, 2, 3], 16) == slot_plan(0, 4, [0, 1, 2, 3], 16)
    assert slot_plan(3, 4, [4, 5], 16).device == "cuda:5" and slot_plan(3, 4, [4, 5], 16).threads == 4
    assert slot_plan(1, 2, None, 2).device == "cpu" and slot_plan(1, 3, [], 2).threads == 1
    with pytest.raises(ValueError, match="node.jobs=2"):
        slot_plan(2, 2, None, 4)


def _hold(lock_dir: str, jobs: int, tag: str, out, release) -> None:
    """Claim a slot, report it, and hold it until the test sets ``release``."""
    out.put((tag, "trying"))
    with claim_slot(Path(lock_dir), jobs, poll_seconds=0.05) as index:
        out.put((tag, index))
        release.wait(timeout=120)


def test_running_jobs_hold_distinct_slots_and_a_third_waits(tmp_path):
    """Real processes and real flocks: two jobs at once get slots 0 and 1; a third gets none while
    both hold theirs, and takes the one that is freed. Each job holds its slot until the test
    releases it: the order of events is set by the test, not by sleeps."""
    ctx = mp.get_context("fork")  # no re-import of this module (and torch) per process
    out = ctx.Queue()
    release = {tag: ctx.Event() for tag in "abc"}
    procs = {tag: ctx.Process(target=_hold, args=(str(tmp_path), 2, tag, out, release[tag])) for tag in "abc"}

    def claimed(tag: str) -> int:
        while True:
            got, what = out.get(timeout=120)
            if what != "trying":
                assert got == tag, f"{got} claimed slot {what} before {tag} did"
                return what

    try:
        procs["a"].start()
        slot_a = claimed("a")
        procs["b"].start()
        slot_b = claimed("b")
        assert sorted((slot_a, slot_b)) == [0, 1]
        procs["c"].start()
        assert out.get(timeout=120) == ("c", "trying")
        with pytest.raises(queue.Empty):  # both slots held: c is still waiting
            out.get(timeout=1.0)
        release["a"].set()
        assert claimed("c") == slot_a  # the freed slot; b still holds the other
    finally:
        for tag, proc in procs.items():
            release[tag].set()
            if proc.pid is not None:
                proc.join(timeout=60)
    assert all(proc.exitcode == 0 for proc in procs.values())


def test_presets_compose():
    paper = compose_config(["experiment=paper"], return_hydra_config=True)
    assert paper.precision == "bf16" and paper.dataset.limit is None and paper.judge.model == "gpt-4.1-mini"
    assert dict(paper.hydra.sweeper.params) == {
        "model": "gemma-2-9b-it,qwen2.5-7b-instruct",
        "intervention": "vector,lora,local_weight",
        "objective": "sft,reps,split",
    }
    gemma = compose_config(["experiment=paper", "model=gemma-2-9b-it", "dataset=psychopathy"])
    qwen = compose_config(["experiment=paper", "model=qwen2.5-7b-instruct", "dataset=powerseeking"])
    axb = compose_config(["experiment=paper", "dataset=axbench"])
    assert (gemma.layer, qwen.layer) == (20, 14)
    assert (gemma.dataset.n_train, gemma.dataset.n_test, qwen.dataset.n_train, qwen.dataset.n_test) == (
        500,
        100,
        500,
        200,
    )
    assert (axb.dataset.n_train, axb.dataset.n_test) == (64, 8)
    diffmean = compose_config(["experiment=paper_diffmean"], return_hydra_config=True)
    assert diffmean.hydra.sweeper.params.objective == "diffmean" and diffmean.precision == "bf16"
    smoke = compose_config(["experiment=smoke"], return_hydra_config=True)
    assert smoke.model.name == "smollm2-135m" and smoke.dataset.limit == 4 and len(smoke.sweep.grid) == 11
    check(compose_config(["experiment=smoke", "objective=sft"]))


def test_launcher_configs_compose():
    node = compose_config(["hydra/launcher=node", "node.jobs=3"], return_hydra_config=True).hydra.launcher
    assert node._target_.endswith("JoblibLauncher") and node.n_jobs == 3
    slurm = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.timeout_min, launcher.mem_gb, launcher.array_parallelism) == (
        1,
        240,
        64,
        16,
    )
    local = compose_config(["hydra/launcher=submitit_local"], return_hydra_config=True).hydra.launcher
    assert local._target_.endswith("LocalLauncher")


def test_plan_estimate_by_hand():
    """Two jobs on one data set (a trained and a DiffMean one) checked against the formulas
    written out by hand."""
    hw = Hardware(peak_flops=1e12, mfu=0.5, bandwidth=1e9, bytes_per_param=2, load_bandwidth=1e8)
    judge = JudgePrice(usd_per_m_input=1.0, usd_per_m_output=2.0, template_tokens=10, output_tokens=5)
    train = [PairTokens(10, 2, 3), PairTokens(20, 1, 1)]  # rows 15, 22 -> 37
    test = [PairTokens(5, 1, 1)]  # row 7
    common = dict(name="d", model="m", params=1e6, train=train, test=test, grid=3, max_new_tokens=4)
    common.update(generation_batch=2, judge_calls_per_answer=3, judge_multipliers=2, generate_negatives=True)
    jobs = [JobSpec(epochs=2, trained=True, **common), JobSpec(epochs=0, trained=False, **common)]
    plan = estimate(jobs, hw, judge)
    rate = 1e12 * 0.5
    assert plan.jobs == 2
    assert plan.stages["model load"].seconds == pytest.approx(2 * 2e6 / 1e8)
    # Train: prefix pass + 2 epochs x 2 directions of the 37 row tokens; DiffMean: one pass.
    assert plan.stages["train"].tokens == 37 * 5 + 37
    assert plan.stages["train"].seconds == pytest.approx((2e6 * 37 * (1 + 12) + 2e6 * 37) / rate)
    assert plan.stages["sweep"].tokens == 2 * 44 * 3
    assert plan.stages["sweep"].seconds == pytest.approx(2 * 2e6 * 44 * 3 / rate)
    # A_n once for the (model, data set): prefill of 35 prompt tokens, 2 batches x 4 steps of decoding.
    assert plan.stages["data (A_n generation)"].tokens == 35 + 3 * 4
    assert plan.stages["data (A_n generation)"].seconds == pytest.approx(2e6 * 35 / rate + 2 * 4 * 2e6 / 1e9)
    # Judged: the 1 test prompt x 2 multipliers per job = 2 answers, 3 calls each.
    assert plan.stages["judge generation"].tokens == 2 * (10 + 2 * 4)
    assert plan.judge_calls == 2 * 2 * 3
    input_tokens = 2 * (6 * 10 + 3 * (10 + 8))
    assert plan.judge_input_tokens == input_tokens and plan.judge_output_tokens == 12 * 5
    assert plan.judge_usd == pytest.approx((input_tokens * 1.0 + 60 * 2.0) / 1e6)


def test_plan_cli_smoke(capsys):
    paper = load_experiment("paper")
    assert paper.main(["all", "--preset", "smoke", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "jobs: 2" in out and "judge (gpt-4.1-mini): 0 calls" in out
    assert "H100" in out and "35% MFU" in out


def test_plan_counts_the_real_data(shared_data, capsys):
    """The paper preset's jobs on one data set: 2 models x 7 form/objective runs; Psychopathy has
    no judge; the plan reads the 500/100 pairs from the local copy."""
    paper = load_experiment("paper")
    assert (
        paper.main(["table2", "--preset", "paper", "--datasets", "psychopathy", "--data", str(shared_data), "--plan"])
        == 0
    )
    out = capsys.readouterr().out
    assert "jobs: 20" in out and "0 calls" in out


def test_paper_preset_commands(shared_data, capsys):
    """Every multirun of the paper preset composes, and each names a data set and a local copy of
    it that exists (the paper's 10 AxBench concepts as a multirun axis)."""
    paper = load_experiment("paper")
    runs = paper.multiruns(paper.PRESETS["paper"], "psychopathy,axbench", shared_data)
    assert sorted((e, o[0]) for e, o in runs) == [
        (e, f"dataset={d}") for e in ("paper", "paper_diffmean") for d in ("axbench", "psychopathy")
    ]
    for experiment, overrides in runs:
        axes = [o for o in overrides if "range(" in o]
        cfg = compose_config([f"experiment={experiment}", *(o for o in overrides if o not in axes)])
        assert Path(cfg.dataset.path).exists() and Path(cfg.dataset.path).is_relative_to(shared_data)
        assert axes == (["dataset.concept_id=range(10)"] if overrides[0] == "dataset=axbench" else [])
    jobs = paper.job_overrides("paper", ["dataset=axbench", "dataset.concept_id=range(10)"], [])
    assert len(jobs) == 2 * 3 * 3 * 10
    assert paper.main(["all", "--preset", "paper", "--dry-run", "--datasets", "psychopathy"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
    assert len(lines) == 2 + len(paper.RECIPES)  # two multiruns, then every report
    assert [line.split("steer.report ")[1].split()[0] for line in lines[2:]] == list(paper.RECIPES)
