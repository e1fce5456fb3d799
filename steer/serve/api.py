"""The OpenAI-compatible HTTP API over an ``Engine``: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` (``stream`` as server-sent events), ``/health``.

A request names its run in ``model`` and its multiplier either in the body's ``m`` (with the
``openai`` client: ``extra_body={"m": 4}``) or after an ``@`` in the model name (``"run@4"``); if
both are given they must agree. A run needs an m (a forgotten ``extra_body`` would otherwise serve
the bare model silently); the base model's own name serves the bare model (m absent or 0).

Every bad request is answered with OpenAI's error body ``{"error": {"message", "type", "param",
"code"}}`` and its status: 400 for a malformed body or value (m, max_tokens, a prompt longer than
the context, ...), 404 for an unknown model, 503 with ``Retry-After`` when the queue is full.
``logprobs`` are not computed: replies carry ``logprobs: null`` (as ``transformers serve``'s).
Sampling: ``temperature`` 0 is greedy, else seeded sampling (``seed`` defaults to 0, so a request
is reproducible unless its seed changes); ``temperature`` defaults to 1 as in OpenAI's API.
"""

from __future__ import annotations

import asyncio
import json
import math
import numbers
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from steer.serve.engine import Engine, Job, QueueFull, ShuttingDown
from steer.serve.playground import playground_router
from steer.serve.runs import RunInfo

DEFAULT_MAX_TOKENS = 256
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An expected failure of one request, answered in OpenAI's error format."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = {404: "not_found_error", 503: "server_error", 500: "server_error"}.get(
            self.status, "invalid_request_error"
        )
        headers = {"Retry-After": str(RETRY_AFTER_S)} if self.status == 503 else None
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


@dataclass
class Served:
    """What the API serves: the engine, its tokenizer, the runs (in the engine's order) and the
    base model's name and context length."""

    engine: Engine
    tokenizer: object
    runs: Sequence[RunInfo]
    base: str
    context: int
    tokenizer_lock: threading.Lock
    created: int = 0
    requests: int = 0


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def _number(body: dict, key: str, default, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ApiError(400, f"{key} must be a finite number, got {value!r}", key)
    if value < low or value > high or (low_open and value == low):
        raise ApiError(400, f"{key} must lie in {'(' if low_open else '['}{low}, {high}], got {value!r}", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, low: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ApiError(400, f"{key} must be an integer >= {low}, got {value!r}", key)
    return value


def sampling(body: dict, chat: bool) -> Sampling:
    """The decoding options of a request body, checked."""
    if body.get("n") not in (None, 1):
        raise ApiError(400, f"n={body['n']!r}: one choice per request is served (n=1)", "n")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, f"best_of={body['best_of']!r}: one candidate per request is served", "best_of")
    max_tokens = _integer(body, "max_tokens", None, 1)
    if chat and max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", None, 1)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(
            400, f"stop must be a non-empty string or a list of up to 4 of them, got {body['stop']!r}", "stop"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=_integer(body, "seed", 0, -(2**63)),
        stop=tuple(stop),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
    )


def _multiplier(value, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ApiError(400, f"m in {where} is not a number", "m") from None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ApiError(400, f"m in {where} must be a finite number, got {value!r}", "m")
    return float(value) + 0.0


def resolve_model(served: Served, body: dict) -> tuple[int, float]:
    """(run index or -1 for the base model, m) of a request: its ``model`` and ``m``."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is missing: name a run (GET /v1/models lists them)", "model")
    name, at, tail = model.rpartition("@")
    if not at:
        name, tail = model, None
    names = [run.name for run in served.runs]
    if name == served.base:
        index = -1
    elif name in names:
        index = names.index(name)
    else:
        raise ApiError(
            404,
            f"The model `{name}` does not exist; served: {', '.join([served.base, *names])}",
            "model",
            "model_not_found",
        )
    from_name = None if tail is None else _multiplier(tail, f"the model name {model!r}")
    from_body = None if body.get("m") is None else _multiplier(body["m"], "the request body")
    if from_name is not None and from_body is not None and from_name != from_body:
        raise ApiError(
            400, f"m is given twice and differs: {from_name} in the model name, {from_body} in the body", "m"
        )
    m = from_name if from_name is not None else from_body
    if index == -1:
        if m not in (None, 0.0):
            raise ApiError(400, f"{served.base} is the base model (no Δ): m must be 0 or absent, got {m}", "m")
        return -1, 0.0
    if m is None:
        raise ApiError(
            400,
            f"m is missing for run {name!r}: give the multiplier as extra_body={{'m': 4}} or model='{name}@4' "
            "(m=0 is the base model)",
            "m",
        )
    return index, m


def _content(value, i: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def chat_prompt(served: Served, body: dict) -> str:
    """The messages rendered through the model's chat template with the generation prompt."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", "messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "developer"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant", f"messages[{i}]")
        role = "system" if message["role"] == "developer" else message["role"]
        turns.append({"role": role, "content": _content(message.get("content"), i)})
    with served.tokenizer_lock:
        if not getattr(served.tokenizer, "chat_template", None):
            return "".join(t["content"] + "\n" for t in turns)
        return served.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def completion_prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be a non-empty string (one prompt per request)", "prompt")
    return prompt


def make_job(served: Served, prompt: str, run: int, m: float, options: Sampling) -> Job:
    """The engine's row for a request, checked against the context length."""
    with served.tokenizer_lock:
        ids = tuple(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ApiError(400, "the prompt tokenises to nothing", "prompt")
    room = served.context - len(ids)
    if room < 1 or (options.max_tokens or 1) > room:
        raise ApiError(
            400,
            f"This model's maximum context length is {served.context} tokens. However, you requested "
            f"{len(ids) + (options.max_tokens or 1)} tokens ({len(ids)} in the prompt, {options.max_tokens or 1} "
            "in the completion). Please reduce the prompt or the completion length.",
            "messages",
            "context_length_exceeded",
        )
    return Job(
        prompt=prompt,
        ids=ids,
        run=run,
        m=m,
        max_tokens=options.max_tokens or min(DEFAULT_MAX_TOKENS, room),
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed,
        stop=options.stop,
    )


def create_app(served: Served) -> FastAPI:
    """The FastAPI application of ``served``; the engine must be started (and stopped) by the caller."""
    app = FastAPI(title="steer.serve", docs_url=None, redoc_url=None)
    served.created = served.created or int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return err.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return ApiError(err.status_code, str(err.detail)).response()

    app.include_router(playground_router(served.runs))

    @app.get("/health")
    async def health():
        running, waiting = served.engine.load
        return {"status": "ok", "running": running, "waiting": waiting}

    @app.get("/v1/models")
    async def models():
        base = {
            "id": served.base,
            "object": "model",
            "created": served.created,
            "owned_by": "steer",
            "base_model": served.base,
        }
        entries = [
            {"id": run.name, "object": "model", "created": served.created, "owned_by": "steer", **run.card()}
            for run in served.runs
        ]
        return {"object": "list", "data": [base, *entries]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _body(request)
        return await _complete(served, body, chat_prompt(served, body), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _body(request)
        return await _complete(served, body, completion_prompt(body), chat=False)

    return app


async def _body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


async def _complete(served: Served, body: dict, prompt: str, chat: bool):
    run, m = resolve_model(served, body)
    options = sampling(body, chat)
    job = make_job(served, prompt, run, m, options)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
    try:
        served.engine.submit(job)
    except (QueueFull, ShuttingDown) as err:
        raise ApiError(503, f"{err}; retry in {RETRY_AFTER_S} s", code="overloaded") from None
    served.requests += 1
    reply = Reply(served, body["model"], m, job, chat, options.include_usage)
    if options.stream:
        return StreamingResponse(reply.stream(events), media_type="text/event-stream")
    parts = []
    while True:
        event = await events.get()
        if event[0] == "delta":
            parts.append(event[1])
        elif event[0] == "done":
            return reply.whole("".join(parts), event[1])
        else:
            raise ApiError(503 if event[1] == "cancelled" else 500, event[1])


class Reply:
    """The OpenAI response objects of one request (whole or streamed chunks)."""

    def __init__(self, served: Served, model: str, m: float, job: Job, chat: bool, include_usage: bool) -> None:
        self.model, self.m, self.job, self.chat, self.include_usage = model, m, job, chat, include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def usage(self) -> dict:
        prompt, completion = len(self.job.ids), len(self.job.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "m": self.m}

    def whole(self, text: str, finish: str) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        return {**self._head(self.object), "choices": [{**choice, "logprobs": None}], "usage": self.usage()}

    def _chunk(self, text: str | None, finish: str | None, first: bool = False) -> str:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        chunk = {**self._head(obj), "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return f"data: {json.dumps(chunk)}\n\n"

    async def stream(self, events: asyncio.Queue) -> AsyncIterator[str]:
        try:
            if self.chat:
                yield self._chunk(None, None, first=True)
            while True:
                event = await events.get()
                if event[0] == "delta":
                    yield self._chunk(event[1], None)
                elif event[0] == "done":
                    yield self._chunk(None, event[1])
                    break
                else:
                    error = {"error": {"message": event[1], "type": "server_error", "param": None, "code": None}}
                    yield f"data: {json.dumps(error)}\n\n"
                    return
            if self.include_usage:
                usage = {**self._head(self._chunk_object()), "choices": [], "usage": self.usage()}
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.job.cancelled = True  # a client that went away frees its row at the next step

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"
