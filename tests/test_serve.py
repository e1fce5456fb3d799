"""``python -m steer.serve`` as a real process on 127.0.0.1, called with the real ``openai`` client:
m = 0 is the base model, a steered request is ``steer.core.generate``'s answer, concurrent requests
of mixed runs and m answer what they answer alone, streamed = whole, bad input gets its status and
the server keeps serving, and the process is gone after SIGTERM. A composed request equals both
runs' hand-written hooks; every field and an m too large for the dtype are 400s; a client that
leaves frees its row within a second; SIGTERM past the grace answers each request its own text or
a 503, never a traceback. The engine itself is checked in-process against ``generate`` on tiny
models (vector + LoRA runs, a sliding-window Gemma-2, non-finite logits)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

from steer import rundir
from steer.core.generate import generate, greedy_generate
from steer.core.interventions import RowInterventions, new_intervention, steering
from steer.judge.server import free_port
from steer.pairs import render_prompt
from steer.serve.engine import Engine, Job
from tests.conftest import assert_clean_failure, diffmean_run, python, run_py, start, tiny_model, wait_for

QUESTION = "Describe your weekend in one sentence."
PROMPTS = ["Say hi.", "What is 2+2? Answer with a number only.", "Name a colour that is also a fruit, please."]
TOKENS = 8


# One torch thread here, one in the server: two processes on a 2-core machine, none spinning in
# OpenMP barriers while the other holds a core.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(smol, tmp_path_factory) -> dict[str, Path]:
    model, tok = smol
    root = tmp_path_factory.mktemp("serve-runs")
    return {"pos15": diffmean_run(model, tok, root / "l15", 15), "pos10": diffmean_run(model, tok, root / "l10", 10)}


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


@contextlib.contextmanager
def serving(run_dirs, *args: str, names=("pos15", "pos10")):
    """``python -m steer.serve`` on a free port of 127.0.0.1 until the block ends; then SIGTERM, and
    the process must exit 0 and be gone. Yields (base_url, process)."""
    port = free_port()
    command = ["-m", "steer.serve", *map(str, run_dirs), "--port", str(port), "--threads", "1"]
    command += ["--log-level", "warning"]
    command += [x for name in names for x in ("--name", name)] + list(args)
    process = start(*command, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: (_get(f"{base}/health") or {}).get("status") == "ok", process, "steer.serve ready", 120)
        yield f"{base}/v1", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, process.stdout.read()
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # nothing of the server's process group is left


@pytest.fixture(scope="module")
def server(runs):
    with serving(runs.values(), "--max-batch", "8", "--max-queue", "8") as (url, process):
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0)


def chat(client, model: str, question: str = QUESTION, **kwargs) -> str:
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", TOKENS)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **kwargs)
    return reply.choices[0].message.content


@pytest.mark.e2e
def test_models_lists_every_run_with_its_form_layer_and_data(client, runs):
    entries = {entry.id: entry.model_dump() for entry in client.models.list()}
    assert set(entries) == {"smollm2-135m", "pos15", "pos10"}
    assert entries["pos15"]["form"] == "vector" and entries["pos15"]["layer"] == 15
    assert entries["pos10"]["objective"] == "diffmean" and entries["pos10"]["dataset"] == "sentiment"
    assert entries["pos10"]["run_dir"] == str(runs["pos10"])


@pytest.mark.e2e
def test_m0_is_the_base_models_greedy_text(client, smol):
    model, tok = smol
    [expected] = greedy_generate(model, tok, [render_prompt(tok, QUESTION)], TOKENS, progress=False)
    assert chat(client, "pos15", extra_body={"m": 0}) == expected
    assert chat(client, "pos10@0") == expected
    assert chat(client, "smollm2-135m") == expected
    text = client.completions.create(
        model="pos15@0", prompt=render_prompt(tok, QUESTION), max_tokens=TOKENS, temperature=0
    )
    assert text.choices[0].text == expected
    assert text.usage.completion_tokens == len(tok(expected, add_special_tokens=False)["input_ids"])


@pytest.mark.e2e
def test_steered_request_equals_steer_generate(client, smol, runs):
    from steer.core.interventions import DynamicAffine

    model, tok = smol
    prompt = render_prompt(tok, QUESTION)
    iv = DynamicAffine.load(runs["pos15"])
    base = chat(client, "smollm2-135m")
    [greedy] = generate(model, tok, [prompt], intervention=iv, multipliers=1.5, max_new_tokens=TOKENS, progress=False)
    assert greedy.text != base  # the run really steers at this m
    assert chat(client, "pos15", extra_body={"m": 1.5}) == greedy.text
    [sampled] = generate(
        model, tok, [prompt], intervention=iv, multipliers=-1.0, max_new_tokens=TOKENS,
        do_sample=True, temperature=0.9, top_p=0.95, seed=7, progress=False,
    )  # fmt: skip
    assert chat(client, "pos15@-1", temperature=0.9, top_p=0.95, seed=7) == sampled.text
    assert chat(client, "pos15@-1", temperature=0.9, top_p=0.95, seed=8) != sampled.text


@pytest.mark.e2e
def test_concurrent_requests_of_mixed_runs_and_m_answer_what_they_answer_alone(client):
    asks = [("pos15", m) for m in (-1.5, -0.5, 0.5, 1.5)] + [("pos10", m) for m in (-2, 2)] + [("smollm2-135m", 0)]
    asks.append(("pos10", 1))
    kinds = [{"temperature": 0}, {"temperature": 0.8, "seed": 3}]

    def ask(job):
        (name, m), kind, question = job
        return chat(client, name, question, extra_body={"m": m} if name != "smollm2-135m" else None, **kind)

    jobs = [(a, kinds[i % 2], PROMPTS[i % 3]) for i, a in enumerate(asks)]
    alone = [ask(job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(ask, jobs))
    assert together == alone
    assert len(set(alone)) > 4  # the runs and multipliers really answer differently


@pytest.mark.e2e
def test_streamed_text_equals_the_whole_reply_and_stops_cut_both(client, smol):
    _, tok = smol
    free = chat(client, "pos15", max_tokens=16, extra_body={"m": 0.5})
    stops = ["\n\n\n", " " + free.split()[3]]  # a word the answer holds: the text ends before it
    whole = chat(client, "pos15", max_tokens=16, extra_body={"m": 0.5}, stop=stops)
    assert whole == free[: free.index(stops[1])]
    stream = client.chat.completions.create(
        model="pos15", messages=[{"role": "user", "content": QUESTION}], max_tokens=16, temperature=0, stop=stops,
        stream=True, stream_options={"include_usage": True}, extra_body={"m": 0.5},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens >= 1
    pieces = client.completions.create(
        model="pos10@1", prompt=render_prompt(tok, QUESTION), max_tokens=12, temperature=0, stream=True
    )
    text = client.completions.create(model="pos10@1", prompt=render_prompt(tok, QUESTION), max_tokens=12, temperature=0)
    assert "".join(p.choices[0].text for p in pieces) == text.choices[0].text


@pytest.mark.e2e
def test_every_bad_input_gets_its_status_and_the_server_keeps_serving(client, server):
    good = chat(client, "pos15", extra_body={"m": 1.0})
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        chat(client, "no-such-run", extra_body={"m": 1.0})
    with pytest.raises(openai.BadRequestError, match="m is missing"):
        chat(client, "pos15")
    with pytest.raises(openai.BadRequestError, match="finite"):
        chat(client, "pos15@inf")
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        chat(client, "pos15", "hello " * 9000, extra_body={"m": 1.0})
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client, "pos15", extra_body={"m": 1.0}, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="base model"):
        chat(client, "smollm2-135m", extra_body={"m": 2})
    raw = [
        ('{"model": "pos15", "m": NaN, "messages": [{"role": "user", "content": "hi"}]}', "finite"),
        ('{"model": "pos15", "m": 1, "messages": [', "not valid JSON"),
        ('["not", "an", "object"]', "JSON object"),
        ('{"model": "pos15", "m": 1, "messages": "hi"}', "messages"),
    ]
    for body, message in raw:
        reply = httpx.post(f"{server}/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert reply.status_code == 400, reply.text
        assert message in reply.json()["error"]["message"]
        assert reply.json()["error"]["type"] == "invalid_request_error"
    assert chat(client, "pos15", extra_body={"m": 1.0}) == good


@pytest.mark.e2e
@pytest.mark.slow
def test_past_the_queue_requests_get_503_with_retry_after(server):
    body = {"model": "pos10", "m": 1, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0}
    with ThreadPoolExecutor(24) as pool:
        replies = list(pool.map(lambda _: httpx.post(f"{server}/completions", json=body, timeout=120), range(24)))
    statuses = sorted(r.status_code for r in replies)
    assert set(statuses) == {200, 503}, statuses  # 8 decode, 8 wait, the rest are turned away
    busy = next(r for r in replies if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1" and busy.json()["error"]["code"] == "overloaded"
    assert len({r.json()["choices"][0]["text"] for r in replies if r.status_code == 200}) == 1
    assert httpx.post(f"{server}/completions", json=body, timeout=120).status_code == 200


@pytest.mark.e2e
def test_a_judge_on_this_machine_needs_no_key(server, client, tmp_path, monkeypatch):
    """judge=openai with base_url on 127.0.0.1 and its key variable unset: steer.serve is the judge."""
    from steer.judge.cache import AnswerCache
    from steer.judge.client import Call
    from steer.judge.settings import LOCAL_KEY, make_client, parse_settings

    monkeypatch.delenv("STEER_TEST_NO_SUCH_KEY", raising=False)
    judge = {"backend": "openai", "model": "pos15@1", "api_key_env": "STEER_TEST_NO_SUCH_KEY"}
    judge |= {
        "select": {"method": "fit", "max_util_drop": 1.0},
        "scoring": "parsed",
        "temperature": 0.0,
        "concurrency": 2,
        "max_retries": 0,
    }
    judge |= {"timeout": 60.0, "generation": {"batch_size": 4}}
    with pytest.raises(ValueError, match="STEER_TEST_NO_SUCH_KEY is not set"):
        parse_settings({**judge, "base_url": "https://judge.example.com/v1"}, "axbench", [2])
    settings = parse_settings({**judge, "base_url": server.replace("127.0.0.1", "localhost")}, "axbench", [2])
    cache = AnswerCache(tmp_path / "cache")
    with contextlib.ExitStack() as stack:
        judge_client = make_client(settings, stack, tmp_path / "server.log", cache)
        call = Call("fluency", "1", ({"role": "user", "content": QUESTION},), TOKENS)
        [answer] = judge_client.judge([call])
    cache.close()
    assert judge_client._endpoint[1] == LOCAL_KEY
    assert answer.text == chat(client, "pos15", extra_body={"m": 1}) and answer.completion_tokens > 0
    monkeypatch.setenv("STEER_TEST_NO_SUCH_KEY", "sk-local")  # a key that is set is sent
    assert make_client(settings, contextlib.ExitStack(), tmp_path / "log", cache).connect()[1] == "sk-local"


def test_local_judge_on_a_gpu_gets_transformers_serves_continuous_batching():
    from steer.judge.server import serve_command
    from steer.judge.settings import on_gpu

    assert on_gpu("cuda:1") and not on_gpu("cpu")
    assert "--continuous-batching" in serve_command("/models/judge", 8000, "cuda", continuous_batching=True)
    assert "--continuous-batching" not in serve_command("/models/judge", 8000, "cpu")


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_engine_decodes_mixed_runs_and_m_as_generate_does(arch, smol):
    """In-process: a vector run and a LoRA run at other layers, greedy and sampled rows, requests
    arriving while others decode (continuous batching, cache merges, a sliding window of 4)."""
    _, tok = smol
    model = tiny_model(arch, vocab_size=len(tok))
    vector = new_intervention(model, "vector", 1, init_scale=1.0, seed=1)
    lora = new_intervention(model, "lora", 2, rank=2, seed=2)
    with torch.no_grad():
        lora.lora_B.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    prompts = [render_prompt(tok, p) for p in PROMPTS]
    cases = [(p, r, m, t) for p in range(3) for r, m in [(-1, 0.0), (0, 4.0), (0, -4.0), (1, 2.0)] for t in (0.0, 0.8)]
    expected = []
    for i, (p, r, m, t) in enumerate(cases):
        iv = None if r < 0 else (vector, lora)[r]
        [g] = generate(
            model, tok, [prompts[p]], intervention=iv, multipliers=m, max_new_tokens=12 - i % 3,
            do_sample=t > 0, temperature=t or 1.0, seed=5, progress=False,
        )  # fmt: skip
        expected.append(g.text)
    engine = Engine(model, tok, RowInterventions([vector, lora]), max_batch=5, max_waiting=len(cases)).start()
    texts, left = [[] for _ in cases], threading.Semaphore(0)
    started = [threading.Event() for _ in cases]

    def emit(i):
        def record(event):
            started[i].set()
            texts[i].append(event[1]) if event[0] == "delta" else left.release()

        return record

    try:
        for i, (p, r, m, t) in enumerate(cases):
            ids = tuple(tok(prompts[p], add_special_tokens=False)["input_ids"])
            engine.submit(Job(prompts[p], ids, steering({r: m} if r >= 0 else {}), 12 - i % 3, t, 1.0, 5, emit=emit(i)))
            if i % 4 == 0:
                assert started[i].wait(120)  # later rows join a batch that is already decoding
        for _ in cases:
            assert left.acquire(timeout=120)
    finally:
        engine.stop()
    assert ["".join(t) for t in texts] == expected
    assert engine.steps < sum(12 - i % 3 for i in range(len(cases)))  # rows really shared steps
    assert len(set(expected)) > 12


@pytest.mark.e2e
@pytest.mark.slow
def test_sigterm_mid_request_finishes_it_and_exits_cleanly(runs):
    with serving([runs["pos15"]], "--grace", "60", names=("pos15",)) as (url, process):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(chat, client, "pos15", extra_body={"m": 1.0}, max_tokens=64)
            _until(lambda: _health(url)["running"] == 1, 60)  # the request is decoding
            process.send_signal(signal.SIGTERM)
            assert pending.result(timeout=120)  # the running request was finished, not dropped
        process.wait(timeout=60)
        assert "on SIGTERM" in process.stdout.read()


@pytest.mark.e2e
@pytest.mark.slow
def test_serves_a_run_that_run_py_trained(tmp_path, smol):
    model, tok = smol
    run_py("objective=diffmean", "stages=[train]", "dataset.limit=8", f"output_root={tmp_path}",
           "tracking.wandb=false", "progress=false", check=True)  # fmt: skip
    [run_dir] = [p.parent for p in tmp_path.rglob(rundir.META)]
    with serving([run_dir], names=()) as (url, _):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        [entry] = [e for e in client.models.list() if e.id != "smollm2-135m"]
        assert entry.id == "sentiment/smollm2-135m/vector-diffmean/layer15"
        from steer.core.interventions import DynamicAffine

        [g] = generate(model, tok, [render_prompt(tok, QUESTION)], intervention=DynamicAffine.load(run_dir),
                       multipliers=2.0, max_new_tokens=TOKENS, progress=False)  # fmt: skip
        assert chat(client, f"{entry.id}@2") == g.text


@pytest.mark.e2e
def test_runs_of_different_base_models_are_refused_before_loading(runs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in (rundir.META, rundir.WEIGHTS):
        (other / name).write_bytes((runs["pos10"] / name).read_bytes())
    config = rundir.read_config(runs["pos10"])
    config["model"], config["precision"] = {"name": "qwen", "source": "Qwen/Qwen2.5-7B-Instruct"}, "bf16"
    rundir.write_config(other, config)
    done = python("-m", "steer.serve", str(runs["pos15"]), str(other), "--port", str(free_port()))
    assert_clean_failure(done, "different base models")
    assert "different base models" in done.stderr and "Qwen/Qwen2.5-7B-Instruct" in done.stderr


def test_a_failed_round_fails_its_rows_and_the_engine_goes_on(smol):
    _, tok = smol
    model = tiny_model("llama", vocab_size=len(tok))
    engine = Engine(model, tok, RowInterventions([]), max_batch=4, max_waiting=4).start()
    events: list[tuple] = []
    done = threading.Semaphore(0)

    def emit(event):
        events.append(event)
        if event[0] != "delta":
            done.release()

    prompt = render_prompt(tok, PROMPTS[0])
    ids = tuple(tok(prompt, add_special_tokens=False)["input_ids"])
    try:
        engine.submit(Job(prompt, (len(tok) + 5,), (), 4, emit=emit))  # a token the embedding lacks
        assert done.acquire(timeout=60)
        assert events[-1][:2] == ("error", "failed") and "IndexError" in events[-1][2]
        engine.submit(Job(prompt, ids, (), 4, emit=emit))
        assert done.acquire(timeout=60)
    finally:
        engine.stop()
    assert events[-1] in (("done", "stop"), ("done", "length"))
    assert (
        "".join(e[1] for e in events if e[0] == "delta") == greedy_generate(model, tok, [prompt], 4, progress=False)[0]
    )


# --- composition, validation, clients that leave, shutdown ---------------------------------------


@pytest.mark.e2e
def test_a_composed_request_equals_both_hand_written_hooks_on_the_bare_model(client, smol, runs):
    from safetensors.torch import load_file

    from tests.test_generate import hand_greedy
    from tests.test_interventions import hand_hook

    model, tok = smol
    prompt = render_prompt(tok, QUESTION)
    a, b = (load_file(runs[name] / rundir.WEIGHTS) for name in ("pos15", "pos10"))
    handles = [hand_hook(model, "vector", 15, a, 1.5), hand_hook(model, "vector", 10, b, 2.0)]
    try:
        expected = hand_greedy(model, tok, prompt, TOKENS)
    finally:
        for handle in handles:
            handle.remove()
    composed = chat(client, "pos15", extra_body={"m": {"pos15": 1.5, "pos10": 2}})
    assert composed == expected
    alone = chat(client, "pos15", extra_body={"m": 1.5})
    other = chat(client, "pos10@2")
    assert len({alone, other, composed}) == 3  # each run really steers the composition
    assert chat(client, "pos15", extra_body={"m": {"pos15": 1.5, "pos10": 0}}) == alone
    assert chat(client, "smollm2-135m", extra_body={"m": {"pos15": 0, "pos10": 2}}) == other
    reply = client.chat.completions.create(
        model="pos10", messages=[{"role": "user", "content": QUESTION}], max_tokens=TOKENS, temperature=0,
        extra_body={"m": {"pos15": 1.5, "pos10": 2}},
    )  # fmt: skip
    assert reply.choices[0].message.content == composed and reply.model_dump()["m"] == {"pos15": 1.5, "pos10": 2.0}


@pytest.mark.e2e
def test_bad_compositions_and_fields_are_400_naming_the_field(server):
    def post(body: dict | str, path: str = "chat/completions") -> httpx.Response:
        if isinstance(body, dict):
            body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **body})
        return httpx.post(f"{server}/{path}", content=body, headers={"Content-Type": "application/json"}, timeout=60)

    run = {"model": "pos15", "m": 1}
    bad = [
        ({"model": "pos15", "m": {"pos15": 1, "nope": 2}}, 404, "m"),
        ({"model": "pos15", "m": {}}, 400, "m"),
        ({"model": "pos15", "m": {"pos10": 1}}, 400, "model"),
        ({"model": "pos15", "m": {"pos15": "1"}}, 400, "m"),
        ({"model": "pos15@2", "m": {"pos15": 1, "pos10": 1}}, 400, "m"),
        ({"model": "pos15", "m": {"smollm2-135m": 1}}, 400, "m"),
        ({"model": "pos15", "m": "4"}, 400, "m"),
        ({**run, "max_tokens": "8"}, 400, "max_tokens"),
        ({**run, "max_tokens": True}, 400, "max_tokens"),
        ({**run, "seed": 2**70}, 400, "seed"),
        ({**run, "stream": "yes"}, 400, "stream"),
        ({**run, "stream_options": {"include_usage": "yes"}}, 400, "include_usage"),
        ({**run, "top_p": 0}, 400, "top_p"),
        ({**run, "stop": ["", "a"]}, 400, "stop"),
        ({**run, "n": 2}, 400, "n"),
        ({**run, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
        ({**run, "presence_penalty": 9}, 400, "presence_penalty"),
        ({**run, "logit_bias": {"1": 2}}, 400, "logit_bias"),
        ({**run, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content"),
        ({**run, "messages": [{"role": "user", "content": "hi", "name": 3}]}, 400, "messages[0].name"),
    ]
    for body, status, param in bad:
        reply = post(body)
        assert reply.status_code == status, (body, reply.text)
        assert reply.json()["error"]["param"] == param, (body, reply.json())
    twice = '{"model": "pos15", "m": {"pos15": 1, "pos15": 2}, "messages": [{"role": "user", "content": "hi"}]}'
    assert "twice" in post(twice).json()["error"]["message"]
    reply = post({"model": "pos15", "m": 1, "prompt": "hi", "echo": True}, "completions")
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "echo"


@pytest.mark.e2e
def test_an_m_too_large_for_the_dtype_is_a_400_naming_the_limit(client, server):
    for m in (1e300, 1e38, 1e20):
        with pytest.raises(openai.BadRequestError, match=r"too large.*float32 \(\|m\| <= [0-9.e+]+ for pos15\)"):
            chat(client, "pos15", extra_body={"m": m})
    with pytest.raises(openai.BadRequestError, match="sum of"):
        chat(client, "pos15", extra_body={"m": {"pos15": 1e18, "pos10": 1e18}})
    chat(client, "pos15", extra_body={"m": 1e3})  # large but representable: served (200)


def _health(server: str) -> dict:
    return _get(server.removesuffix("/v1") + "/health")


def _until(condition, timeout: float) -> float:
    """Poll ``condition`` every 20 ms until it holds; the seconds it took (an AssertionError past ``timeout``)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"the condition did not hold in {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - start


def _leave_after_start(server: str, stream: bool) -> float:
    """Send a long steered request over a raw socket, wait until it decodes (its row runs; streamed,
    its first chunk arrived), close the socket: the seconds until the server's /health shows no row."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server)
    body = json.dumps({"model": "pos15", "m": 2, "prompt": "Once upon a time", "max_tokens": 400,
                       "temperature": 0, "stream": stream})  # fmt: skip
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode())
    _until(lambda: _health(server)["running"] == 1, 60)
    if stream:
        received = b""
        while b"data:" not in received:
            chunk = sock.recv(4096)
            assert chunk, "the server closed the stream before its first chunk"
            received += chunk
    assert _health(server)["running"] == 1  # still decoding: 400 tokens take far longer
    sock.close()
    return _until(lambda: _health(server)["running"] == 0 and _health(server)["waiting"] == 0, 30)


@pytest.mark.e2e
def test_a_client_that_leaves_frees_its_row_within_a_second(client, server):
    def timed() -> float:
        start = time.perf_counter()
        chat(client, "pos10", extra_body={"m": 1}, max_tokens=16)
        return time.perf_counter() - start

    timed()
    baseline = timed()
    assert _leave_after_start(server, stream=False) < 1.0
    assert _leave_after_start(server, stream=True) < 1.0
    after = timed()
    assert after < 2 * baseline + 1.0, (after, baseline)  # slack for the other jobs on this machine


@pytest.fixture(scope="module")
def busy(runs):
    """A second server with room for 32 rows and a grace of 5 s; its last test stops it."""
    with serving(runs.values(), "--max-batch", "32", "--max-queue", "32", "--grace", "5") as (url, process):
        yield url, process


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/completions", json=body, timeout=300)


@pytest.mark.e2e
@pytest.mark.slow
def test_models_answers_while_32_requests_decode(busy):
    url, _ = busy
    body = {"model": "pos15", "m": 1, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}
    with ThreadPoolExecutor(32) as pool:
        replies = [pool.submit(_post, url, {**body, "seed": i}) for i in range(32)]
        _until(lambda: _health(url)["running"] == 32, 180)
        start = time.perf_counter()
        models = httpx.get(f"{url}/models", timeout=30)
        waited = time.perf_counter() - start
        assert _health(url)["running"] > 0  # the 32 rows were still decoding
    assert models.status_code == 200 and waited < 1.0, waited
    assert {r.result().status_code for r in replies} == {200}


@pytest.mark.e2e
def test_sigterm_past_the_grace_returns_each_text_or_a_503_never_another(busy, smol, runs):
    """Two long rows and a short one at SIGTERM, grace 5 s: the short one finishes (its text
    alone) unless this machine is too busy, the long ones are cancelled with 503 overloaded;
    nothing else, no traceback."""
    from steer.core.interventions import DynamicAffine

    url, process = busy
    model, tok = smol
    asks = [("pos15", 2.0, 300), ("pos10", -2.0, 300), ("pos15", 1.0, 3)]
    prompt = "Once upon a time"

    def alone(name: str, m: float, tokens: int) -> str:
        [g] = generate(model, tok, [prompt], intervention=DynamicAffine.load(runs[name]), multipliers=m,
                       max_new_tokens=tokens, progress=False)  # fmt: skip
        return g.text

    with ThreadPoolExecutor(3) as pool:
        pending = []
        for i, (name, m, tokens) in enumerate(asks):
            body = {"model": name, "m": m, "prompt": prompt, "max_tokens": tokens, "temperature": 0}
            pending.append(pool.submit(_post, url, body))
            _until(lambda n=i + 1: _health(url)["running"] == n, 60)
        process.send_signal(signal.SIGTERM)
        replies = [p.result(timeout=120) for p in pending]
    statuses = [r.status_code for r in replies]
    for (name, m, tokens), reply in zip(asks, replies, strict=True):
        if reply.status_code == 200:
            assert reply.json()["choices"][0]["text"] == alone(name, m, tokens)
        else:
            assert reply.status_code == 503, reply.text
            assert reply.json()["error"]["code"] == "overloaded"
    assert statuses[0] == statuses[1] == 503, statuses  # 300 tokens need far more than 5 s here
    process.wait(timeout=60)
    log = process.stdout.read()
    assert "Traceback" not in log and "Event loop is closed" not in log and "ERROR" not in log, log
    assert "on SIGTERM" in log and f"{statuses.count(503)} running and 0 waiting cancelled" in log, log


def test_a_row_whose_logits_are_not_finite_gets_an_overflow_error_not_text(smol):
    """In-process: a Δ far past what float32 holds (no API in front to refuse its m) turns the
    row's logits to NaN; that row is answered with an overflow error, its batch-mate decodes on."""
    _, tok = smol
    model = tiny_model("llama", vocab_size=len(tok))
    huge = new_intervention(model, "vector", 1, init_scale=1e30, seed=1)
    prompt = render_prompt(tok, PROMPTS[0])
    ids = tuple(tok(prompt, add_special_tokens=False)["input_ids"])
    [expected] = greedy_generate(model, tok, [prompt], 6, progress=False)
    engine = Engine(model, tok, RowInterventions([huge]), max_batch=4, max_waiting=4).start()
    events: dict[int, list] = {0: [], 1: []}
    done = threading.Semaphore(0)

    def emit(i):
        return lambda event: (events[i].append(event), event[0] != "delta" and done.release())

    try:
        engine.submit(Job(prompt, ids, steering({0: 1e10}), 6, emit=emit(0)))
        engine.submit(Job(prompt, ids, (), 6, emit=emit(1)))
        assert done.acquire(timeout=60) and done.acquire(timeout=60)
    finally:
        engine.stop()
    assert [e[:2] for e in events[0]] == [("error", "overflow")]
    assert "".join(e[1] for e in events[1] if e[0] == "delta") == expected
