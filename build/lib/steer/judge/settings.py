"""The ``judge`` config as plain, checked values, and the endpoints a judge can call.

``parse_settings`` takes plain containers (the ``judge`` mapping, the data set's loader, the sweep
grid), checks every value and names the key of a bad one; no model loads. ``BACKENDS`` maps
``judge.backend`` to how the client reaches its endpoint: ``local`` starts ``transformers serve``
on 127.0.0.1 on the first cache miss (with its continuous batching on a GPU), ``openai`` calls
``judge.base_url`` with the key from the environment variable ``judge.api_key_env`` (read at
connect time, never stored). A ``judge.base_url`` on this machine (127.0.0.1, localhost, ::1:
vLLM, llama.cpp's server, ``python -m steer.serve``) needs no key: the variable is used when set.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from steer.core.models import EMBEDDED_SOURCE, check_model_folder, resolve_source
from steer.judge.cache import AnswerCache
from steer.judge.client import JudgeClient
from steer.judge.protocols import Protocol, get_protocol
from steer.judge.rubrics import Rubric, get_rubric
from steer.judge.select import METHODS
from steer.judge.server import local_server

SCORINGS = ("parsed", "expected")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# What the client sends as its key to a local endpoint that checks none (the client needs one).
LOCAL_KEY = "unused-by-a-local-endpoint"


@dataclass(frozen=True)
class GenerationSettings:
    """How the judged answers are generated (``judge.generation``, defaults from the protocol)."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    seed: int
    batch_size: int


@dataclass(frozen=True)
class Settings:
    """The ``judge`` config as plain, checked values."""

    protocol: Protocol
    rubrics: tuple[Rubric, ...]
    # The metric judge.select=validation maximises: the protocol's; with judge.rubrics overridden,
    # the first rubric's mean score (accuracy when no rubric is left).
    headline: str
    backend: str
    model: str
    base_url: str | None
    api_key_env: str | None
    device: str
    startup_timeout: float
    select: str
    m: float | None
    candidates: tuple[float, ...]
    max_util_drop: float
    scoring: str
    top_logprobs: int
    temperature: float
    max_tokens: int | None
    concurrency: int
    max_retries: int
    timeout: float
    generation: GenerationSettings
    cache_dir: str | None


def positive_int(value, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def finite(value, key: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _rubrics(j: dict, protocol: Protocol, loader: str) -> tuple[tuple[Rubric, ...], str]:
    """The rubrics (the protocol's unless ``judge.rubrics`` overrides them) and the headline metric."""
    names = protocol.rubrics if j.get("rubrics") is None else tuple(j["rubrics"])
    try:
        rubrics = tuple(get_rubric(name) for name in names)
    except KeyError as err:
        raise ValueError(f"judge.rubrics: {err.args[0]}") from None
    if names == protocol.rubrics:
        return rubrics, protocol.headline
    if names:
        return rubrics, names[0]
    if protocol.accuracy:
        return rubrics, "accuracy"
    raise ValueError(f"judge.rubrics is empty and dataset.loader={loader} has no accuracy: nothing to judge")


def _selection(j: dict, grid: Sequence) -> tuple[str, float | None, tuple[float, ...], float]:
    """(method, m, candidates, max_util_drop) from ``judge.select`` (``method`` and the option's own key)."""
    sel = j.get("select") or {}
    select = sel.get("method")
    if select not in METHODS:
        raise ValueError(f"judge/select={select!r} is not one of {', '.join(METHODS)}")
    m = None if sel.get("m") is None else finite(sel["m"], "judge.select.m")
    if select == "fixed" and m is None:
        raise ValueError("judge/select=fixed needs judge.select.m (the multiplier to judge), e.g. judge.select.m=8")
    raw = sel.get("candidates")
    if raw is None:
        raw = [x for x in grid or [] if isinstance(x, numbers.Real) and not isinstance(x, bool) and x > 0]
    candidates = tuple(sorted({finite(x, "judge.select.candidates") for x in raw}))
    if select == "validation" and not candidates:
        raise ValueError("judge/select=validation needs judge.select.candidates (multipliers to try), e.g. [2,4,8]")
    drop = finite(sel.get("max_util_drop", 1.0), "judge.select.max_util_drop")
    if drop < 0:
        raise ValueError(f"judge.select.max_util_drop must be >= 0, got {drop!r}")
    return select, m, candidates, drop


def _generation(gen: dict, protocol: Protocol) -> GenerationSettings:
    """``judge.generation`` with the protocol's defaults (null = the protocol's)."""

    def pick(key: str, default):
        return default if gen.get(key) is None else gen[key]

    out = GenerationSettings(
        max_new_tokens=positive_int(pick("max_new_tokens", protocol.max_new_tokens), "judge.generation.max_new_tokens"),
        do_sample=bool(pick("do_sample", protocol.do_sample)),
        temperature=finite(pick("temperature", protocol.temperature), "judge.generation.temperature"),
        top_p=finite(pick("top_p", 1.0), "judge.generation.top_p"),
        seed=int(finite(pick("seed", 0), "judge.generation.seed")),
        batch_size=positive_int(gen.get("batch_size"), "judge.generation.batch_size"),
    )
    if out.do_sample and out.temperature <= 0:
        raise ValueError(f"judge.generation.temperature must be > 0 when sampling, got {out.temperature!r}")
    if not 0 < out.top_p <= 1:
        raise ValueError(f"judge.generation.top_p must be in (0, 1], got {out.top_p!r}")
    return out


def parse_settings(j: dict, loader: str, grid: Sequence) -> Settings:
    """Check the ``judge`` mapping ``j`` against the data set's ``loader``; every error names its key."""
    try:
        protocol = get_protocol(loader)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    rubrics, headline = _rubrics(j, protocol, loader)
    backend = j.get("backend")
    if backend not in BACKENDS:
        raise ValueError(f"judge.backend={backend!r} is not one of {', '.join(BACKENDS)} (choose judge=local|openai)")
    if not j.get("model"):
        raise ValueError("judge.model is empty: name the judge model")
    select, m, candidates, drop = _selection(j, grid)
    scoring = j.get("scoring")
    if scoring not in SCORINGS:
        raise ValueError(f"judge.scoring={scoring!r} is not one of {', '.join(SCORINGS)}")
    s = Settings(
        protocol=protocol,
        rubrics=rubrics,
        headline=headline,
        backend=backend,
        model=str(j["model"]),
        base_url=j.get("base_url"),
        api_key_env=j.get("api_key_env"),
        device=str(j.get("device") or "auto"),
        startup_timeout=finite(j.get("startup_timeout", 300), "judge.startup_timeout"),
        select=select,
        m=m,
        candidates=candidates,
        max_util_drop=drop,
        scoring=scoring,
        top_logprobs=positive_int(j.get("top_logprobs"), "judge.top_logprobs") if scoring == "expected" else 0,
        temperature=finite(j.get("temperature"), "judge.temperature"),
        max_tokens=None if j.get("max_tokens") is None else positive_int(j["max_tokens"], "judge.max_tokens"),
        concurrency=positive_int(j.get("concurrency"), "judge.concurrency"),
        max_retries=int(finite(j.get("max_retries"), "judge.max_retries")),
        timeout=finite(j.get("timeout"), "judge.timeout"),
        generation=_generation(j.get("generation") or {}, protocol),
        cache_dir=j.get("cache_dir"),
    )
    if s.max_retries < 0 or s.timeout <= 0:
        raise ValueError("judge.max_retries must be >= 0 and judge.timeout > 0")
    if rubrics:  # accuracy alone (psychopathy) calls no judge
        BACKENDS[backend].check(s)
    return s


class LocalBackend:
    """``transformers serve`` for ``judge.model`` (a model source) on 127.0.0.1, started on demand."""

    @staticmethod
    def check(s: Settings) -> None:
        if s.base_url:
            raise ValueError("judge=local starts its own server: leave judge.base_url null (or use judge=openai)")
        if not s.model.startswith("embedded:") and not Path(s.model).expanduser().is_dir():
            raise ValueError(
                f"judge.model={s.model!r}: judge=local serves a local model folder or {EMBEDDED_SOURCE}, "
                "and there is no such folder"
            )
        check_model_folder(s.model, "judge.model")

    @staticmethod
    def model_name(s: Settings) -> str:
        return resolve_source(s.model)  # transformers serve names a model by its folder path

    @staticmethod
    def connect(
        s: Settings, stack: contextlib.ExitStack, server_log: Path, progress: bool = False
    ) -> Callable[[], tuple[str, str]]:
        def start() -> tuple[str, str]:
            batching = on_gpu(s.device)
            server = stack.enter_context(
                local_server(
                    LocalBackend.model_name(s), server_log, s.device, s.startup_timeout, batching, progress=progress
                )
            )
            return server.base_url, "unused-by-transformers-serve"

        return start


def on_gpu(device: str) -> bool:
    """Whether ``judge.device`` puts the local judge on a GPU (``transformers serve`` then batches
    requests continuously, with paged attention; on a CPU it serves them one by one)."""
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def is_local(base_url: str) -> bool:
    """Whether ``base_url`` names an endpoint on this machine."""
    return urllib.parse.urlsplit(base_url).hostname in LOCAL_HOSTS


class OpenAIBackend:
    """Any OpenAI-compatible endpoint at ``judge.base_url``; the key from ``$judge.api_key_env``
    (not needed by an endpoint on this machine)."""

    @staticmethod
    def check(s: Settings) -> None:
        if not s.base_url:
            raise ValueError("judge.base_url is empty: give the endpoint, e.g. https://api.openai.com/v1")
        if is_local(s.base_url):
            return
        if not s.api_key_env:
            raise ValueError("judge.api_key_env is empty: name the environment variable that holds the API key")
        if not os.environ.get(s.api_key_env):
            raise ValueError(
                f"the judge's API key variable {s.api_key_env} is not set (judge.api_key_env): "
                f"export {s.api_key_env}=... before running judge=openai"
            )

    @staticmethod
    def model_name(s: Settings) -> str:
        return s.model

    @staticmethod
    def connect(
        s: Settings, stack: contextlib.ExitStack, server_log: Path, progress: bool = False
    ) -> Callable[[], tuple[str, str]]:
        return lambda: (s.base_url, (os.environ.get(s.api_key_env) if s.api_key_env else None) or LOCAL_KEY)


BACKENDS = {"local": LocalBackend, "openai": OpenAIBackend}


def make_client(
    s: Settings, stack: contextlib.ExitStack, server_log: Path, cache: AnswerCache, progress: bool = False
) -> JudgeClient:
    """The judge client of ``s``; a local server (if any) starts on its first cache miss and stops
    when ``stack`` closes. ``progress``: bars over the server's start-up and the judge calls."""
    backend = BACKENDS[s.backend]
    return JudgeClient(
        model=backend.model_name(s) if s.rubrics else s.model,
        connect=backend.connect(s, stack, server_log, progress),
        cache=cache,
        temperature=s.temperature,
        top_logprobs=s.top_logprobs,
        concurrency=s.concurrency,
        max_retries=s.max_retries,
        timeout=s.timeout,
        local=s.backend == "local",
        progress=progress,
    )
