"""A local OpenAI-compatible judge: ``transformers serve`` for a model folder, on 127.0.0.1.

``local_server(model_path)`` starts ``transformers serve <model_path>`` (the model preloaded and
used for every request) on a free port in its own process group, waits for ``/health`` and for
``/v1/models`` to list the model, yields the ``base_url``, and on leaving — normally, on an error
or on Ctrl-C — stops the whole process group (SIGTERM, then SIGKILL after a grace period).

What ``transformers serve`` (transformers 5.x) does with the requests the judge sends:
- the ``model`` field must be the served model's name, i.e. the folder path it was started with
  (another name is answered 400);
- ``/v1/chat/completions`` applies the model's chat template and honours ``max_tokens``;
  ``temperature=0`` means greedy decoding (it logs that temperature is unused without sampling);
- ``logprobs`` / ``top_logprobs`` are accepted but ignored (logged as unsupported fields) and the
  reply carries ``logprobs: null``, so ``judge.scoring=expected`` has nothing to weigh against a
  local judge: its expected scores stay empty.
- the API key is not checked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from steer.runtime.interrupt import signals_interrupt

log = logging.getLogger("steer")

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """The local judge server did not come up; the message carries the end of its log."""


@dataclass(frozen=True)
class LocalServer:
    base_url: str  # http://127.0.0.1:<port>/v1
    model: str  # the name requests must use: the model folder path
    pid: int  # the server's process id (and process group id)
    log_path: Path


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve_command(
    model_path: str, port: int, device: str = "auto", host: str = HOST, continuous_batching: bool = False
) -> list[str]:
    """The ``transformers serve`` command line, run by this interpreter (so the venv's transformers);
    ``continuous_batching`` (for a GPU) batches concurrent requests with paged attention."""
    return [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        model_path,
        "--host",
        host,
        "--port",
        str(port),
        "--device",
        device,
        "--log-level",
        "info",
        *(["--continuous-batching"] if continuous_batching else []),
    ]


def _get_json(url: str, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(
    base: str, model: str, process: subprocess.Popen, log_path: Path, timeout: float, progress: bool = False
) -> None:
    """Until ``/health`` answers ok and ``/v1/models`` lists ``model``; fail early if the process dies.
    ``progress``: a bar of the seconds waited, out of ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    with tqdm(total=round(timeout), desc="judge: starting transformers serve", unit="s", disable=not progress) as bar:
        while time.monotonic() < deadline:
            if _ready(base, model, process, log_path):
                return
            time.sleep(0.5)
            bar.update(min(round(time.monotonic() - start), bar.total) - bar.n)
    raise ServerError(
        f"transformers serve was not ready after {timeout:.0f} s (raise judge.startup_timeout for a slow start); "
        f"its log ({log_path}) ends:\n{_tail(log_path)}"
    )


def _ready(base: str, model: str, process: subprocess.Popen, log_path: Path) -> bool:
    """Whether the server answers and lists ``model``; a process that exited is an error."""
    if process.poll() is not None:
        raise ServerError(
            f"transformers serve exited with status {process.returncode} before it was ready; "
            f"its log ({log_path}) ends:\n{_tail(log_path)}"
        )
    health = _get_json(f"{base}/health")
    if health is None or health.get("status") != "ok":
        return False
    models = _get_json(f"{base}/v1/models") or {}
    return any(entry.get("id") == model for entry in models.get("data", []))


def stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the process group led by ``process``: SIGTERM, then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def local_server(
    model_path: str,
    log_path: str | Path,
    device: str = "auto",
    startup_timeout: float = 300.0,
    continuous_batching: bool = False,
    progress: bool = False,
) -> Iterator[LocalServer]:
    """``transformers serve`` for ``model_path`` on 127.0.0.1, stopped (with its children) on exit;
    ``progress``: a bar while it starts."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://{HOST}:{port}"
    with open(log_path, "ab") as sink:
        process = subprocess.Popen(
            serve_command(model_path, port, device, continuous_batching=continuous_batching),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    log.info("judge: started transformers serve (pid %d) on %s for %s", process.pid, base, model_path)
    try:
        with signals_interrupt(signals=(signal.SIGTERM,)):  # a scheduler's kill stops the server too
            wait_ready(base, model_path, process, log_path, startup_timeout, progress)
            yield LocalServer(f"{base}/v1", model_path, process.pid, log_path)
    finally:
        stop_group(process)
        log.info("judge: stopped transformers serve (pid %d)", process.pid)
