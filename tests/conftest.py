"""Shared fixtures: the embedded model (loaded once per session), tiny models built from a config,
and the shared data folder (tests that need it skip with a reason when it is absent)."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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


def load_experiment(name: str):
    """The script experiments/<name>.py as a module (the experiments folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
