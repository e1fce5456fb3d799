"""The judge stage end to end on the embedded model (DiffMean, two pairs per split): config errors
before anything runs, a real local judge (transformers serve) with its cache, an endpoint that fails
mid-stage, and the API key never written.

The trained run (train, sweep, fit) is made once per module and copied for each judge run; the
judge's answer cache lives in the test's own folder (``judge.cache_dir``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from steer.judge.cache import CACHE_FILE, AnswerCache
from steer.stages import ConfigError, compose_config, run
from tests.conftest import assert_refused, start

GRID = "[-4,-3,-2,-1,0,1,2,3,4]"
BASE = ["dataset.limit=2", f"sweep.grid={GRID}", "tracking.wandb=false", "progress=false"]
# Tiny judge work: one rubric, 2 test prompts x (m = 0, m = 2), short answers and replies.
JUDGE = [
    "judge/select=fixed",
    "judge.select.m=2",
    "judge.rubrics=[fluency]",
    "judge.max_tokens=4",
    "judge.generation.max_new_tokens=8",
]
# AxBench's protocol samples (temperature 1.0): the same seed gives the same answers, so a re-run's
# judge calls are all cache hits.
SAMPLED = [*JUDGE, "judge.generation.do_sample=true", "judge.generation.temperature=1.0"]


def config(*overrides: str):
    return compose_config([*BASE, *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("judge") / "trained"
    assert run(config("stages=[train,sweep,fit]"), run_dir).ran == ["data", "train", "sweep", "fit"]
    return run_dir


def copy_run(trained: Path, target: Path) -> Path:
    shutil.copytree(trained, target)
    return target


@pytest.mark.parametrize(
    "override, message",
    [
        ("judge.rubrics=[fluency,vibes]", r"judge\.rubrics: unknown rubric 'vibes'"),
        ("judge/select=best", r"judge/select=best is not one of fit, fixed, validation"),
        ("judge.scoring=maybe", r"judge\.scoring='maybe'"),
        ("judge.select.m=null", r"judge/select=fixed needs judge\.select\.m"),
        ("judge.concurrency=0", r"judge\.concurrency must be a positive integer"),
    ],
)
def test_bad_judge_config_fails_before_anything_runs(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):  # by composition (the schema) or the run's check
        run(
            config("stages=[train,sweep,fit,judge]", "judge/select=fixed", "judge.select.m=2", override),
            tmp_path / "run",
        )
    assert not (tmp_path / "run").exists()


def test_data_set_without_protocol_and_unset_key_fail_before_anything_runs(tmp_path, monkeypatch):
    from steer.judge import protocols

    monkeypatch.delitem(protocols.PROTOCOLS, "sentiment")
    cfg = config("stages=[train,sweep,fit,judge]")
    assert_refused(cfg, tmp_path / "a", r"dataset\.loader='sentiment' has no judge protocol")
    monkeypatch.undo()
    monkeypatch.delenv("STEER_TEST_NO_SUCH_KEY", raising=False)
    cfg = config("stages=[train,sweep,fit,judge]", "judge=openai", "judge.api_key_env=STEER_TEST_NO_SUCH_KEY")
    assert_refused(cfg, tmp_path / "b", r"API key variable STEER_TEST_NO_SUCH_KEY is not set")


def serve_processes() -> list[psutil.Process]:
    """The `transformers serve` processes this test process started (a leaked one stays our
    descendant); servers of other jobs on the machine are not ours to count."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:  # it ended while we looked
            continue
        if "transformers.cli.transformers" in cmd and "serve" in cmd:
            found.append(proc)
    return found


@pytest.mark.e2e
@pytest.mark.slow
def test_local_judge_over_http_then_cached(trained, tmp_path):
    before = {p.pid for p in serve_processes()}
    run_dir = copy_run(trained, tmp_path / "run")
    cache_dir = tmp_path / "cache"
    cfg = config("stages=[judge]", *SAMPLED, f"judge.cache_dir={cache_dir}")
    assert run(cfg, run_dir).ran == ["judge"]
    log = (run_dir / "judge_server.log").read_text()
    posts = log.count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert posts == 4  # 2 prompts x 2 multipliers x 1 rubric, each over HTTP
    metrics = json.loads((run_dir / "metrics.json").read_text())["judge"]
    assert metrics["usage"]["calls"] == 4 and metrics["usage"]["cached"] == 0
    assert metrics["generation"]["do_sample"] and metrics["generation"]["temperature"] == 1.0
    assert metrics["m"] == 2.0 and metrics["select"] == "fixed"
    judgments = pd.read_parquet(run_dir / "judgments.parquet")
    assert len(judgments) == 4 and not judgments["cached"].any()
    for _, row in judgments.iterrows():  # parsed, or marked unparseable and counted 0 (AxBench's rule)
        if row["parsed"]:
            assert row["score"] in (0.0, 1.0, 2.0) and f"{row['score']:g}" in row["reply"].split(":")[-1]
        else:
            assert row["score"] == 0.0
    generations = pd.read_parquet(run_dir / "generations.parquet")
    assert sorted(generations["m"].unique()) == [0.0, 2.0] and len(generations) == 4
    cache = AnswerCache(cache_dir)
    assert len(cache) == 4
    cache.close()
    assert {p.pid for p in serve_processes()} <= before  # no server left behind
    # A batch size is not part of the judge's fingerprint (at any depth): nothing re-runs.
    same = config("stages=[judge]", *SAMPLED, f"judge.cache_dir={cache_dir}", "judge.generation.batch_size=1")
    assert run(same, run_dir).ran == []

    # The re-run (forced) answers everything from the cache: no server, no HTTP call.
    rerun_cfg = config("stages=[judge]", *SAMPLED, f"judge.cache_dir={cache_dir}", "force=true")
    assert run(rerun_cfg, run_dir).ran == ["judge"]
    assert pd.read_parquet(run_dir / "generations.parquet")["text"].tolist() == generations["text"].tolist()
    assert (run_dir / "judge_server.log").read_text() == log
    again = json.loads((run_dir / "metrics.json").read_text())["judge"]
    assert again["usage"]["calls"] == 0 and again["usage"]["cached"] == 4
    rerun = pd.read_parquet(run_dir / "judgments.parquet")
    assert rerun["cached"].all() and rerun["reply"].tolist() == judgments["reply"].tolist()
    assert {p.pid for p in serve_processes()} <= before

    # Table 3's bootstrap resamples per-example rows whose means are the stage's metrics.
    from steer.report.table3 import find_judged, run_examples

    (judged,), _ = find_judged(tmp_path)
    for condition, frame in run_examples(judged).items():
        assert set(frame.columns) == {"accuracy", "fluency"} and len(frame) == 2
        for metric in frame.columns:
            assert np.nanmean(frame[metric]) == pytest.approx(again[condition][metric]), (condition, metric)


@pytest.mark.slow
def test_accuracy_with_m_chosen_on_validation_and_by_the_fit(trained, tmp_path):
    """No rubric left: accuracy alone (PrefOdds > 0 from a scoring pass), no generation, no judge."""
    from steer.judge.select import by_fit

    sweep = pd.read_parquet(trained / "sweep.parquet")
    test = sweep[sweep["split"] == "test"]
    ids = sorted(test["example_id"].unique(), key=list(test["example_id"]).index)
    validation, report = ids[:1], ids[1:]
    run_dir = copy_run(trained, tmp_path / "validation")
    cfg = config("stages=[judge]", "judge.rubrics=[]", "judge/select=validation", "judge.select.candidates=[-4,4]")
    assert run(cfg, run_dir).ran == ["judge"]
    metrics = json.loads((run_dir / "metrics.json").read_text())["judge"]
    assert metrics["prompts"] == {"validation": 1, "report": 1}
    assert metrics["usage"]["calls"] == 0 and len(pd.read_parquet(run_dir / "generations.parquet")) == 0

    def accuracy(m, which):  # from the sweep file: grid points are scored with the same engine
        rows = test[(test["m"] == m) & test["example_id"].isin(which)]
        return float((rows["pref_odds"] > 0).mean())

    scores = {m: accuracy(m, validation) for m in (-4.0, 4.0)}
    best = min((m for m in scores if scores[m] == max(scores.values())), key=lambda m: (abs(m), m))
    assert metrics["select"] == "validation" and metrics["m"] == best
    assert metrics["selection"]["validation"] == {str(m): v for m, v in sorted(scores.items())}
    assert metrics["steered"]["accuracy"] == accuracy(best, report)
    assert metrics["vanilla"]["accuracy"] == accuracy(0.0, report)
    kept = pd.read_parquet(run_dir / "accuracy.parquet")  # per pair, for the report's bootstrap
    assert sorted(kept["m"].unique()) == sorted({0.0, best})
    for m in (0.0, best):
        rows = kept[(kept["m"] == m) & kept["example_id"].isin(report)]
        assert float((rows["pref_odds"] > 0).mean()) == metrics["steered" if m else "vanilla"]["accuracy"]

    run_dir = copy_run(trained, tmp_path / "fit")
    assert run(config("stages=[judge]", "judge.rubrics=[]", "judge/select=fit"), run_dir).ran == ["judge"]
    metrics = json.loads((run_dir / "metrics.json").read_text())["judge"]
    expected = by_fit(json.loads((trained / "fit.json").read_text()), (-4, 4), 1.0)
    assert metrics["select"] == "fit" and metrics["m"] == expected.m and metrics["reason"] == expected.reason
    assert metrics["prompts"] == {"validation": 0, "report": 2}


@pytest.mark.slow
def test_endpoint_failing_mid_stage_keeps_judgments_and_rerun_completes(
    trained, tmp_path, flaky_endpoint, monkeypatch, caplog
):
    secret = "sk-test-DO-NOT-WRITE-4f1c9a"
    monkeypatch.setenv("STEER_TEST_JUDGE_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = copy_run(trained, tmp_path / "run")
    cache_dir = tmp_path / "cache"
    judge = [
        "judge=openai",
        f"judge.base_url={flaky_endpoint.url}",
        "judge.api_key_env=STEER_TEST_JUDGE_KEY",
        "judge.model=gpt-4.1-mini",
        "judge.max_retries=1",
        "judge.concurrency=1",
        "judge.timeout=20",
        f"judge.cache_dir={cache_dir}",
        "tracking.wandb=true",
    ]
    flaky_endpoint.judge.ok = 2
    from steer.judge.client import JudgeError

    with pytest.raises(JudgeError, match=r"failed after 1 retries.*2 of 4 answers are in the cache"):
        run(config("stages=[judge]", *JUDGE, *judge), run_dir)
    assert len(flaky_endpoint.judge.seen) == 2 + 2 * 2  # 2 answered; 2 more calls, each tried twice (1 retry)
    kept = pd.read_parquet(run_dir / "judgments.parquet")
    assert len(kept) == 2 and (kept["score"] == 2.0).all() and kept["parsed"].all()
    cache = AnswerCache(cache_dir)
    assert len(cache) == 2
    cache.close()
    assert not (run_dir / "metrics.json").exists()
    assert list((run_dir / "generations.parts").rglob("*.parquet"))  # the finished generation is kept

    flaky_endpoint.judge.ok = 10**6  # the endpoint is back: the re-run asks only for the 2 missing answers
    flaky_endpoint.judge.seen = []
    with caplog.at_level("INFO", logger="steer"):
        assert run(config("stages=[judge]", *JUDGE, *judge), run_dir).ran == ["judge"]
    assert "generate: computed 0 of 1 chunks, 1 resumed" in caplog.text  # nothing generated twice
    assert not (run_dir / "generations.parts").exists()
    assert len(flaky_endpoint.judge.seen) == 2
    done = pd.read_parquet(run_dir / "judgments.parquet")
    assert len(done) == 4 and done["cached"].sum() == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())["judge"]
    assert metrics["usage"]["calls"] == 2 and metrics["usage"]["cached"] == 2
    assert metrics["steered"]["fluency"] == 2.0 and "hm" not in metrics["steered"]  # one rubric: no HM
    # gpt-4.1-mini's price: 2 calls x (100 x 0.40 + 10 x 1.60) / 1e6 dollars
    assert metrics["usage"]["cost_usd"] == pytest.approx(2 * (100 * 0.40 + 10 * 1.60) / 1e6)

    # The key went to the endpoint, and into no file of the run directory (W&B offline files included).
    assert all(call["auth"] == f"Bearer {secret}" for call in flaky_endpoint.judge.seen)
    written = [p for p in run_dir.rglob("*") if p.is_file()] + [cache_dir / CACHE_FILE]
    assert any("wandb" in str(p) for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), path


@pytest.mark.e2e
@pytest.mark.slow
def test_local_server_that_cannot_start_fails_clearly_and_leaves_nothing(tmp_path):
    from steer.judge.server import ServerError, local_server

    before = {p.pid for p in serve_processes()}
    missing = str(tmp_path / "no-such-model")
    with (
        pytest.raises(ServerError, match=r"exited with status \d+ before it was ready; its log"),
        local_server(missing, tmp_path / "server.log", startup_timeout=120),
    ):
        pass
    assert {p.pid for p in serve_processes()} <= before


SERVE_UNTIL_KILLED = """
import signal, sys
from steer.judge.server import local_server
from steer.core.models import resolve_source
with local_server(resolve_source("embedded:smollm2-135m"), sys.argv[1], "cpu", 300) as server:
    print(server.pid, flush=True)
    signal.pause()  # holds the server until the test's signal
"""


@pytest.mark.e2e
@pytest.mark.slow
def test_sigterm_to_the_judging_process_stops_the_local_server(tmp_path):
    """A scheduler's SIGTERM unwinds the block holding the server (steer.runtime.interrupt), so the server's
    whole process group is stopped, never orphaned."""
    import signal

    holder = start("-c", SERVE_UNTIL_KILLED, str(tmp_path / "server.log"))
    server_pid = int(holder.stdout.readline())  # the server answered /health and /v1/models
    assert psutil.pid_exists(server_pid)
    holder.send_signal(signal.SIGTERM)
    _, err = holder.communicate(timeout=120)
    assert holder.returncode != 0 and "KeyboardInterrupt: SIGTERM" in err
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
