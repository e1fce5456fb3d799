"""The one home of the tests' shared helpers: the repository and shared data paths, the embedded
model (loaded once per session), tiny models built from a config (and saved as model folders), a
real DiffMean run directory (``diffmean_run``), a fresh process run as a user runs steer
(``python``, ``run_py``, ``start``, ``wait_for``), and the fake OpenAI-compatible judge endpoint.
A test that starts a process carries ``@pytest.mark.e2e``."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from steer.core.interventions import DynamicAffine

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def process_env(env: dict | None = None) -> dict:
    """The environment of a process a test starts: steer importable from this checkout, the hub
    offline (nothing is downloaded in tests), one OpenMP thread (2 cores shared); ``env`` on top."""
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}


def python(
    *args: str,
    cwd: Path = REPO,
    env: dict | None = None,
    timeout: float = 600,
    launcher: Sequence[str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """``python ARGS`` (or ``LAUNCHER ARGS``, e.g. ``accelerate_launch(2)``) in a fresh process, as
    a user runs it, from ``cwd``; stdout and stderr captured as text. ``check``: a non-zero exit
    fails the test, showing the end of both streams."""
    command = [*(launcher or [sys.executable]), *args]
    done = subprocess.run(command, cwd=cwd, env=process_env(env), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def accelerate_launch(processes: int) -> list[str]:
    """The ``accelerate launch`` prefix that runs a script in ``processes`` CPU processes (a free port)."""
    from steer.judge.server import free_port

    launch = f"launch --multi_gpu --num_processes {processes} --num_machines 1 --main_process_port {free_port()}"
    return [str(Path(sys.executable).with_name("accelerate")), *launch.split()]


def run_py(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` from the repository (``python``'s keywords)."""
    return python("run.py", *args, **kwargs)


def start(*args: str, cwd: Path = REPO, env: dict | None = None, **popen) -> subprocess.Popen:
    """``python ARGS`` started in the background, stdout and stderr piped as text (``popen`` overrides)."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=process_env(env), **options)


def wait_for(done: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 540) -> None:
    """Return once ``done()`` holds (a file or state the running ``process`` writes); fail if the
    process ends first or ``timeout`` seconds pass. The event, not a guessed sleep, sets the pace."""
    deadline = time.monotonic() + timeout
    while not done():
        assert process.poll() is None, f"the process ended (status {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def assert_clean_failure(done: subprocess.CompletedProcess, message: str) -> None:
    """A command line's refusal: exit 2, ``message`` in its output, no traceback."""
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    assert done.returncode == 2, out
    assert message in out, out


def load_experiment(name: str):
    """``experiments/NAME.py`` imported as module ``NAME`` (the scripts are no package)."""

    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """The root logger as the test found it: a command's ``main`` called in-process may add a
    handler on the test's captured stderr, which pytest closes after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in set(root.handlers) - set(handlers):
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a 2-core machine they otherwise spend most of their time in idle OpenMP workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, frozen, eval mode, CPU."""
    from steer.core.models import EMBEDDED_SOURCE, load_model

    torch.manual_seed(0)
    return load_model(EMBEDDED_SOURCE)


def assert_refused(cfg, run_dir: Path, match: str) -> None:
    """``steer.stages.run`` refuses ``cfg`` with a ConfigError matching ``match`` (a regex) and
    leaves no run directory behind."""
    from steer.stages import ConfigError, run

    with pytest.raises(ConfigError, match=match):
        run(cfg, run_dir)
    assert not run_dir.exists()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data sets at {SHARED_DATA} (absent on this machine)")
    return SHARED_DATA


def tiny_model(arch: str, seed: int = 0, vocab_size: int = 128):
    """A randomly initialised 4-layer causal LM of architecture ``arch`` (llama, qwen2, gemma2)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if arch == "gemma2":
        common.update(head_dim=8, final_logit_softcapping=30.0, sliding_window=4)
    config = AutoConfig.for_model(arch, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(params=["llama", "qwen2", "gemma2"])
def tiny(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The embedded SmolLM2's tokenizer alone (no weights loaded)."""
    from steer.core.models import EMBEDDED_SOURCE, load_tokenizer

    return load_tokenizer(EMBEDDED_SOURCE)


@pytest.fixture
def tiny_folder(tmp_path_factory, smol_tokenizer) -> Callable[[str], tuple[torch.nn.Module, str]]:
    """``build(arch) -> (model, folder)``: ``tiny_model(arch)`` saved as a model folder with
    SmolLM2's tokenizer, so anything that loads a model by path (exports, stages) can load it."""

    def build(arch: str):
        folder = tmp_path_factory.mktemp(f"tiny-{arch}")
        model = tiny_model(arch)
        model.save_pretrained(folder)
        smol_tokenizer.save_pretrained(folder)
        return model, str(folder)

    return build


def diffmean_run(model, tok, run_dir: Path, layer: int) -> Path:
    """A real run directory: a DiffMean vector of 8 built-in sentiment pairs at ``layer``, saved
    through ``DynamicAffine.save``, with the config keys a run writes about its model and data."""
    from steer import rundir
    from steer.core.interventions import new_intervention
    from steer.core.models import EMBEDDED_SOURCE
    from steer.datasets import sentiment
    from steer.objectives.diffmean import diffmean_vector
    from steer.pairs import to_records

    records = [r for r in to_records(tok, sentiment.load(n_train=8, n_test=0)) if r.split == "train"]
    iv = new_intervention(model, "vector", layer, model_name="smollm2-135m", objective="diffmean")
    iv.load_tensors({"delta_b": diffmean_vector(model, tok, records, layer, progress=False)})
    iv.save(run_dir)
    rundir.write_config(
        run_dir,
        {
            "model": {"name": "smollm2-135m", "source": EMBEDDED_SOURCE},
            "precision": "fp32",
            "dataset": {"name": "sentiment"},
            "objective": {"name": "diffmean"},
            "run_id": f"sentiment/smollm2-135m/vector-diffmean/layer{layer}",
        },
    )
    return run_dir


# --- independent references: what a test compares steer's numbers with ---------------------------


def randomised(model, form: str, layer: int, seed: int = 1, scale: float = 0.05) -> DynamicAffine:
    """An intervention with every tensor non-zero, so a wrong formula shows in the logits."""
    from steer.core.interventions import new_intervention

    iv = new_intervention(model, form, layer, rank=4, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (scale if form != "vector" else 1.0))
    return iv


def hand_hook(model, form: str, layer: int, tensors: dict[str, torch.Tensor], m: float):
    """An independent implementation of Δh from the saved tensors alone."""
    from steer.core.models import decoder_layer, layer_linear

    if form == "vector":
        delta_b = tensors["delta_b"]

        def add_vector(module, args, output):
            return output + m * delta_b

        return decoder_layer(model, layer).register_forward_hook(add_vector)
    if form == "lora":  # B·(A·x), in the factored order, as a LoRA adapter computes it

        def add_lora(module, args, output):
            return output + m * (args[0] @ tensors["lora_A"].T @ tensors["lora_B"].T)

        return layer_linear(model, layer, "mlp.down_proj").register_forward_hook(add_lora)
    delta_w = tensors["delta_w"]
    delta_b = tensors.get("delta_b", torch.zeros(delta_w.shape[0]))

    def add_affine(module, args, output):
        return output + m * (args[0] @ delta_w.T + delta_b)

    return layer_linear(model, layer, "mlp.down_proj").register_forward_hook(add_affine)


def reference_logprob(model, ids: list[int], n_prompt: int) -> float:
    """Plain transformers: full logits of one unpadded sequence, summed over the answer."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(n_prompt, len(ids)))


class FlakyJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint: the first ``ok`` chat completions succeed, later ones get 500."""

    ok = 0
    seen: list[dict] = []
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            FlakyJudge.seen.append({"auth": self.headers.get("Authorization"), "body": body})
            serve = len(FlakyJudge.seen) <= FlakyJudge.ok
        if not serve:
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "judge down", "type": "server_error"}}')
            return
        reply = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Reads well.\nRating: [[2]]"},
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@dataclass
class Endpoint:
    """A running ``FlakyJudge``: its base URL and the handler class whose ``ok``/``seen`` a test sets
    and reads (through the fixture, so the class is the one the server uses)."""

    url: str
    judge: type[FlakyJudge]


@pytest.fixture
def flaky_endpoint() -> Iterator[Endpoint]:
    from steer.judge.server import free_port

    FlakyJudge.seen, FlakyJudge.ok = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FlakyJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Endpoint(f"http://127.0.0.1:{server.server_address[1]}/v1", FlakyJudge)
    server.shutdown()
    server.server_close()


def wandb_records(path: Path) -> list:
    """Every record of an offline run's ``.wandb`` file ``path``, parsed with wandb's own protobuf schema.

    The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks
    of chunks (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records
