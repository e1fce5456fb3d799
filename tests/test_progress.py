"""Progress bars (tqdm) with rate and ETA on the long waits: bootstrap replicates, fit restarts,
judge calls and the local judge server's start-up; none with ``progress=False``, and the stages
show none when stderr is not a terminal (``RunContext.progress``)."""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from synthetic_runs import VECTOR_GRID, write_sweep

from steer.analysis.bootstrap import replicate
from steer.analysis.fit import curve, fit_curve
from steer.judge.cache import AnswerCache
from steer.judge.client import Call, JudgeClient
from steer.judge.server import wait_ready
from tests.conftest import start

# tqdm's line: "desc: 100%|███| n/n [elapsed<remaining, rate unit/s]"
# The bar's total, elapsed time, ETA and rate slots; a bar that ends within tqdm's refresh interval
# (0.1 s: a fast fit on an idle machine) shows them unmeasured, as "?".
RATE_AND_ETA = r"\d+/{n} \[\d\d:\d\d<(\d\d:\d\d|\?), +([\d.]+ ?|\?)(s/)?{unit}"


def bar(text: str, desc: str, n: int, unit: str) -> bool:
    return desc in text and re.search(RATE_AND_ETA.format(n=n, unit=unit), text) is not None


def test_bootstrap_replicates(tmp_path, capsys):
    frame = write_sweep(tmp_path, VECTOR_GRID, 8.0, n=4)
    statistic = lambda curves: {"mean": float(np.mean(curves["pref", "test"][1]))}  # noqa: E731
    replicate(frame, statistic, 5, seed=0, progress=True)
    assert bar(capsys.readouterr().err, "bootstrap", 5, "replicate")
    quiet = replicate(frame, statistic, 5, seed=0, progress=False)
    assert capsys.readouterr().err == "" and len(quiet["mean"]) == 5


def test_fit_restarts(capsys):
    m = np.array(VECTOR_GRID, dtype=float)
    params = {"alpha": 0.2, "beta": 1.0, "b": 0.5, "m_pos": 0.0, "m_neg": 0.0}
    y = curve("pref", m, {**params, "L_pos": 64.0, "L_neg": 64.0, "p_pos": 1.5, "p_neg": 1.0})
    fit = fit_curve("pref", m, y, restarts=3, progress=True, label="pref train")
    assert fit.r2 > 0.99
    assert bar(capsys.readouterr().err, "fit pref train", 4, "restart")  # the neutral start + 3 restarts
    fit_curve("pref", m, y, restarts=3)
    assert capsys.readouterr().err == ""


def test_judge_calls(tmp_path, flaky_endpoint, capsys):
    """Real HTTP calls to a server on 127.0.0.1: one bar step per call that reached it."""
    flaky_endpoint.judge.ok = 10**6
    cache = AnswerCache(tmp_path / "cache")
    client = JudgeClient(
        model="judge-model", connect=lambda: (flaky_endpoint.url, "key"), cache=cache, progress=True, max_retries=0
    )
    calls = [Call("fluency", "1", ({"role": "user", "content": f"text {i}"},), 16) for i in range(3)]
    client.judge(calls)
    assert bar(capsys.readouterr().err, "judge judge-model", 3, "call")
    client.progress = False
    client.judge([Call("fluency", "1", ({"role": "user", "content": "another"},), 16)])
    assert capsys.readouterr().err == ""
    cache.close()


class SlowServer(BaseHTTPRequestHandler):
    """``/health`` and ``/v1/models`` as transformers serve answers them, ready from the ``ready_at``-th
    request on (wait_ready polls every 0.5 s: a start-up of about 2.5 s, counted, not timed)."""

    requests = 0
    ready_at = 6

    def do_GET(self):  # noqa: N802 (http.server's name)
        SlowServer.requests += 1
        ready = SlowServer.requests >= self.ready_at
        body = {"/health": {"status": "ok"}, "/v1/models": {"data": [{"id": "/models/judge"}]}}.get(self.path)
        if not ready or body is None:
            self.send_response(503)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.e2e
def test_server_start_up(tmp_path, capsys):
    SlowServer.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    process = start("-c", "import signal; signal.pause()")  # the "server process": alive until killed
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        wait_ready(base, "/models/judge", process, tmp_path / "server.log", timeout=30, progress=True)
    finally:
        process.kill()
        server.shutdown()
    err = capsys.readouterr().err
    assert "judge: starting transformers serve" in err
    assert re.search(r"\d+/30 \[\d\d:\d\d<\d\d:\d\d", err)  # seconds waited of the timeout, elapsed<remaining


@pytest.mark.parametrize(("setting", "tty", "shown"), [(True, True, True), (True, False, False), (False, True, False)])
def test_stage_progress_needs_the_key_and_a_terminal(tmp_path, monkeypatch, setting, tty, shown):
    from steer.stages import compose_config
    from steer.stages.context import RunContext

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    ctx = RunContext(compose_config([f"progress={str(setting).lower()}", "device=cpu"]), tmp_path)
    assert ctx.progress is shown
