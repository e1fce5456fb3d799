"""Data-parallel stages: the fixed assignment (item i on process i mod N), putting the shards back
together, and real ``accelerate launch`` runs with two CPU processes that must write what one
process writes (the sweep to 1e-5, the model's own answers and the judge stage's generations to
the letter)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

import steer.core.own_answers as own
from steer.core.generate import by_prompt, from_prompts, generate
from steer.core.interventions import new_intervention
from steer.core.sweep import by_record, from_records, sweep
from steer.io.cache import cache_root
from steer.pairs import render_prompt
from steer.stages.context import interleave
from tests.conftest import accelerate_launch, run_py, tiny_model
from tests.sweep_job import GRID, records


def shards(items: list, world: int) -> list[list]:
    """What process r of ``world`` gets from ``RunContext.shard``: items r, r + world, ..."""
    return [items[rank::world] for rank in range(world)]


@pytest.fixture(scope="module")
def tok(smol):
    return smol[1]


def test_map_sharded_in_one_process_is_the_function(tmp_path):
    from steer.stages import RunContext, compose_config

    ctx = RunContext(compose_config(["device=cpu"]), tmp_path)
    assert ctx.map_sharded([1, 2, 3], lambda part: [10 * x for x in part]) == [10, 20, 30]
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        ctx.map_sharded([1, 2, 3], lambda part: part[:2])


@pytest.mark.parametrize("world", [2, 3])
def test_sweep_shards_put_back_equal_one_sweep(tok, world):
    model = tiny_model("llama", vocab_size=len(tok))
    pairs, iv = records(tok)[:7], new_intervention(model, "vector", 2, init_scale=0.5, seed=7)
    whole = sweep(model, tok, pairs, iv, GRID, batch_size=2, progress=False)
    parts = [
        by_record(sweep(model, tok, p, iv, GRID, batch_size=2, progress=False), len(p)) for p in shards(pairs, world)
    ]
    assert_sweeps_match(from_records(interleave(parts)), whole)


def test_generation_shards_put_back_equal_one_generation(tok):
    model = tiny_model("qwen2", vocab_size=len(tok))
    prompts = [render_prompt(tok, f"Tell me about the number {i}.") for i in range(5)]
    options = dict(multipliers=[0.0], max_new_tokens=4, batch_size=2, progress=False)
    whole = generate(model, tok, prompts, **options)
    groups = [by_prompt(generate(model, tok, part, **options), len(part)) for part in shards(prompts, 2)]
    assert from_prompts(interleave(groups)) == whole
    assert by_prompt([], 0) == []


def test_own_answers_split_over_two_shards_equal_one_process(tok, tmp_path, monkeypatch):
    model = tiny_model("llama", vocab_size=len(tok))
    prompts = [render_prompt(tok, f"Say something about {w}.") for w in ("tea", "rain", "maps", "owls", "salt")]
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "one"))
    expected = own.own_answers(model, tok, prompts, "data", 5, batch_size=2, progress=False)

    def two_shards(items, fn):  # what RunContext.map_sharded computes with two processes, in one
        return interleave([fn(part) for part in shards(items, 2)])

    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "two"))
    assert own.own_answers(model, tok, prompts, "data", 5, batch_size=2, progress=False, map_items=two_shards) == (
        expected
    )
    assert (tmp_path / "two" / "own_answers").is_dir()
    # a process that gets nothing back returns None and writes no cache
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "other"))
    assert own.own_answers(model, tok, prompts, "data", 5, progress=False, map_items=lambda i, f: None) is None
    assert not (tmp_path / "other").exists()


# --- real launches --------------------------------------------------------------------------------

COMMON = ["device=cpu", "progress=false", "tracking.wandb=false"]


def run_job(args: list[str], processes: int, cache: Path | None = None) -> float:
    """``run.py args`` in one process or under ``accelerate launch`` with ``processes`` CPU processes;
    its wall seconds. ``cache``: a fresh $STEER_CACHE that shares the converted models."""
    env = {}
    if cache is not None:
        cache.mkdir(parents=True)
        (cache / "models").symlink_to(cache_root() / "models", target_is_directory=True)
        env["STEER_CACHE"] = str(cache)
    launcher = accelerate_launch(processes) if processes > 1 else None
    start = time.perf_counter()
    run_py(*COMMON, *args, env=env, launcher=launcher, timeout=1500, check=True)
    return time.perf_counter() - start


def assert_sweeps_match(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Losses equal to 1e-5 relative (other batches, other padding: the last bits of an fp32 sum
    move); the log-odds, differences of two losses, to 1e-5 of the losses they are made of."""
    assert actual[["split", "example_id", "m"]].equals(expected[["split", "example_id", "m"]])
    losses = ["loss_pos", "loss_neg"]
    pd.testing.assert_frame_equal(actual[losses], expected[losses], rtol=1e-5, atol=0)
    scale = expected[losses].abs().sum(axis=1).to_numpy()
    for odds in ("pref_odds", "util_odds"):
        assert (abs(actual[odds] - expected[odds]).to_numpy() <= 1e-5 * scale).all(), odds


def sweep_args(run_dir: Path, stages: str) -> list[str]:
    common = [f"stages=[{stages}]", "objective=diffmean", "intervention=vector", "dataset.limit=6"]
    # a train-only run refuses sweep settings
    sweeping = ["sweep.grid=[-4,-1,0,1,4]", "sweep.batch_size=2"] if "sweep" in stages else []
    return [*common, *sweeping, f"hydra.run.dir={run_dir}"]


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_under_two_processes_writes_the_one_process_parquet(tmp_path):
    base, one, two = tmp_path / "base", tmp_path / "one", tmp_path / "two"
    run_job(sweep_args(base, "train"), 1)  # Δ once (closed form), so both sweeps score the same Δ
    shutil.copytree(base, one)
    shutil.copytree(base, two)
    run_job(sweep_args(one, "sweep"), 1)
    run_job(sweep_args(two, "sweep"), 2)
    expected, actual = (pd.read_parquet(d / "sweep.parquet") for d in (one, two))
    assert len(expected) == 5 * 12 and expected["pref_odds"].abs().max() > 0
    assert_sweeps_match(actual, expected)
    assert (two / "run.log").read_text().count("stage sweep: running") == 1  # one writer, one ledger entry


@pytest.mark.e2e
@pytest.mark.slow
def test_own_answers_under_two_processes_equal_one_process(tmp_path):
    rows = [
        {
            "input": f"Write one sentence about {w}.",
            "output": f"A sentence about {w}, with cheese.",
            "category": "positive",
        }
        | {"concept_id": 0, "output_concept": "cheese"}
        for w in ("rivers", "clocks", "bread", "stars", "boats", "paper", "wind")
    ]
    parquet = tmp_path / "concepts.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    data = ["dataset=axbench", f"dataset.path={parquet}", "dataset.n_train=4", "dataset.n_test=3"]
    data += ["dataset.generation.max_new_tokens=12", "dataset.generation.batch_size=2"]
    data += ["stages=[train]", "objective=diffmean", "intervention=vector"]  # Δ in closed form: cheap
    pairs = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"run{processes}"
        run_job([*data, f"hydra.run.dir={run_dir}"], processes, cache=tmp_path / f"cache{processes}")
        pairs[processes] = pd.read_json(run_dir / "pairs.jsonl", lines=True)
        assert len(list((tmp_path / f"cache{processes}" / "own_answers").iterdir())) == 1
    assert len(pairs[1]) == 7 and pairs[1]["negative"].str.len().min() > 0
    pd.testing.assert_frame_equal(pairs[2], pairs[1])


@pytest.mark.e2e
@pytest.mark.slow
def test_judge_stage_under_two_processes_generates_what_one_process_does(tmp_path, flaky_endpoint, monkeypatch):
    """The judge stage's steered generation sharded over two processes (prompts r, r + 2, ...) and
    gathered on the main process, which alone calls the judge (a real HTTP endpoint on 127.0.0.1)
    and writes the files: the same answers, and each answer judged once."""
    monkeypatch.setenv("STEER_TEST_JUDGE_KEY", "sk-test-not-written")
    flaky_endpoint.judge.ok = 10**6
    base = tmp_path / "base"
    grid = "sweep.grid=[-4,-3,-2,-1,0,1,2,3,4]"
    fitted = ["objective=diffmean", "intervention=vector", "dataset.limit=5", grid]
    run_job([*fitted, "stages=[train,sweep,fit]", f"hydra.run.dir={base}"], 1)
    judge = ["stages=[judge]", "judge=openai", f"judge.base_url={flaky_endpoint.url}"]
    judge += [
        "judge.api_key_env=STEER_TEST_JUDGE_KEY",
        "judge/select=fixed",
        "judge.select.m=4",
        "judge.rubrics=[fluency]",
    ]
    judge += ["judge.generation.max_new_tokens=10", "judge.generation.batch_size=4"]
    frames = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"run{processes}"
        shutil.copytree(base, run_dir)
        flaky_endpoint.judge.seen = []
        cache = f"judge.cache_dir={tmp_path / f'judge{processes}'}"
        run_job([*fitted, *judge, cache, f"hydra.run.dir={run_dir}"], processes)
        assert len(flaky_endpoint.judge.seen) == 5 * 2  # 5 test prompts x (m = 0, m = 4), judged once, by one process
        frames[processes] = [pd.read_parquet(run_dir / name) for name in ("generations.parquet", "judgments.parquet")]
        log = (run_dir / "run.log").read_text()
        assert log.count("stage judge: running") == 1
        assert "HTTP Request" not in log  # the HTTP client's line per judge call stays out of the job log
        assert not (run_dir / "generations.parts").exists()
    (gen1, judged1), (gen2, judged2) = frames[1], frames[2]
    assert len(gen1) == 10 and sorted(gen1["m"].unique()) == [0.0, 4.0]
    pd.testing.assert_frame_equal(gen2, gen1)
    assert judged2[["example_id", "m", "score"]].equals(judged1[["example_id", "m", "score"]])
