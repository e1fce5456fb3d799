"""The OpenAI-compatible HTTP API over an ``Engine``: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` (``stream`` as server-sent events), ``/health``.

A request names its run in ``model`` and its multiplier either in the body's ``m`` (with the
``openai`` client: ``extra_body={"m": 4}``) or after an ``@`` in the model name (``"run@4"``); if
both are given they must agree. A run needs an m (a forgotten ``extra_body`` would otherwise serve
the bare model silently); the base model's own name serves the bare model (m absent or 0).
Several runs compose when ``m`` is an object from run name to m (``{"RUN_A": 4, "RUN_B": -2}``);
``model`` is then one of them or the base model.

Every bad request is answered with OpenAI's error body ``{"error": {"message", "type", "param",
"code"}}`` and its status: 400 for a malformed body or value (m, max_tokens, a prompt longer than
the context, an m too large for the model's dtype, ...), 404 for an unknown model, 503 with
``Retry-After`` when the queue is full or the server shuts down. Every field is checked before
the request is queued; a client that disconnects cancels its row.
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
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from steer.core.interventions import Steering, representable, steering
from steer.serve.engine import CANCELLED, OVERFLOW, Engine, Job, QueueFull, ShuttingDown
from steer.serve.playground import playground_router
from steer.serve.runs import RunInfo

DEFAULT_MAX_TOKENS = 256
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An expected failure of one request, answered in OpenAI's error format."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        return {404: "not_found_error", 503: "server_error", 500: "server_error"}.get(
            self.status, "invalid_request_error"
        )

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if self.status == 503 else None
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


@dataclass
class Served:
    """What the API serves: the engine, a tokenizer of its own (the engine has another), the runs
    (in the engine's order) with each one's ``multiplier_limit``, and the base model's name,
    dtype and context length."""

    engine: Engine
    tokenizer: object
    runs: Sequence[RunInfo]
    limits: Sequence[float]
    base: str
    dtype: str
    context: int
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
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


def _integer(body: dict, key: str, default: int | None, low: int, high: int = 2**63 - 1) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(400, f"{key} must be an integer in [{low}, {high}], got {value!r}", key)
    return value


def _boolean(body: dict, key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} must be true or false, got {value!r}", key)
    return value


def _unsupported(body: dict, chat: bool) -> None:
    """Fields of OpenAI's API that would change the answer but are not computed here: their type
    and range are checked, and only their neutral value passes."""
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, 0.0, -2.0, 2.0) != 0.0:
            raise ApiError(400, f"{key} is not applied by steer.serve: leave it 0 or absent", key)
    if body.get("logit_bias") not in (None, {}):
        raise ApiError(400, "logit_bias is not applied by steer.serve: leave it absent", "logit_bias")
    if chat:
        _boolean(body, "logprobs")
        _integer(body, "top_logprobs", None, 0, 20)
    else:
        _integer(body, "logprobs", None, 0, 5)
        if _boolean(body, "echo"):
            raise ApiError(400, "echo is not supported: the reply holds the completion only", "echo")
        if body.get("suffix") is not None:
            raise ApiError(400, "suffix is not supported", "suffix")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise ApiError(400, f"user must be a string, got {body['user']!r}", "user")


def sampling(body: dict, chat: bool) -> Sampling:
    """The decoding options of a request body, checked (type and range of every field)."""
    if body.get("n") not in (None, 1) or isinstance(body.get("n"), bool):
        raise ApiError(400, f"n={body['n']!r}: one choice per request is served (n=1)", "n")
    if body.get("best_of") not in (None, 1) or isinstance(body.get("best_of"), bool):
        raise ApiError(400, f"best_of={body['best_of']!r}: one candidate per request is served", "best_of")
    _unsupported(body, chat)
    max_tokens = _integer(body, "max_tokens", None, 1)
    if chat:
        max_tokens = _integer(body, "max_completion_tokens", max_tokens, 1) if max_tokens is None else max_tokens
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(
            400, f"stop must be a non-empty string or a list of up to 4 of them, got {body['stop']!r}", "stop"
        )
    stream = _boolean(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, f"stream_options must be an object, got {options!r}", "stream_options")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=_integer(body, "seed", 0, -(2**63)),
        stop=tuple(stop),
        stream=stream,
        include_usage=_boolean(options, "include_usage"),
    )


def _multiplier(value, where: str, text: bool = False) -> float:
    """A finite m; ``text`` (the model name's tail after ``@``) may spell it as a string."""
    if text:
        try:
            value = float(value)
        except ValueError:
            raise ApiError(400, f"m in {where} is not a number", "m") from None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ApiError(400, f"m in {where} must be a finite number, got {value!r}", "m")
    return float(value) + 0.0


def _run_index(served: Served, name: str, param: str = "model") -> int:
    """The index of run ``name``, -1 for the base model; an unknown name is a 404."""
    names = [run.name for run in served.runs]
    if name == served.base:
        return -1
    if name in names:
        return names.index(name)
    raise ApiError(
        404, f"The model `{name}` does not exist; served: {', '.join([served.base, *names])}", param, "model_not_found"
    )


def _composition(served: Served, given: dict) -> dict[int, float]:
    """{run index: m} of a body's ``m`` object ({"RUN_A": 4, "RUN_B": -2}), checked."""
    if not given:
        raise ApiError(400, "m is an empty object: name at least one run and its m", "m")
    ms: dict[int, float] = {}
    for name, value in given.items():
        index = _run_index(served, name, "m")
        if index == -1:
            raise ApiError(400, f"m names the base model {name!r}, which has no Δ: name runs only", "m")
        ms[index] = _multiplier(value, f"m[{name!r}]")
    dirs: dict = {}
    for index in ms:
        run = served.runs[index]
        same = dirs.setdefault(run.run_dir.resolve(), run.name)
        if same != run.name:
            raise ApiError(
                400,
                f"{same} and {run.name} are the same run ({run.run_dir}): a run cannot be composed with itself",
                "m",
            )
    return ms


def _check_limits(served: Served, ms: dict[int, float]) -> None:
    """400 when the runs at ``ms`` would steer the activations past what the model's dtype holds."""
    if representable(list(ms.values()), [served.limits[k] for k in ms]):
        return
    limits = ", ".join(f"|m| <= {served.limits[k]:.3g} for {served.runs[k].name}" for k in ms)
    composed = "; composed, the sum of |m| / limit must stay <= 1" if len(ms) > 1 else ""
    raise ApiError(
        400,
        f"m is too large: the steered activations would not be representable in {served.dtype} ({limits}{composed})",
        "m",
        "m_out_of_range",
    )


def resolve_model(served: Served, body: dict) -> tuple[Steering, float | dict[str, float]]:
    """(the row's steering, the m the reply echoes) of a request's ``model`` and ``m``: a number
    for the run ``model`` names (or ``model="run@4"``), or an object of several runs of this
    server, each with its m, of which ``model`` is one (or the base model)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is missing: name a run (GET /v1/models lists them)", "model")
    name, at, tail = model.rpartition("@")
    if not at:
        name, tail = model, None
    index = _run_index(served, name)
    from_name = None if tail is None else _multiplier(tail, f"the model name {model!r}", text=True)
    given = body.get("m")
    if isinstance(given, dict):
        ms = _composition(served, given)
        if index != -1 and index not in ms:
            raise ApiError(400, f"model {name!r} is not one of the runs m names ({', '.join(given)})", "model")
        m = 0.0 if index == -1 else ms[index]
        if from_name is not None and from_name != m:
            raise ApiError(400, f"m is given twice and differs: {from_name} in the model name, {m} in the body", "m")
        _check_limits(served, ms)
        return steering(ms), {served.runs[k].name: v for k, v in ms.items()}
    from_body = None if given is None else _multiplier(given, "the request body")
    if from_name is not None and from_body is not None and from_name != from_body:
        raise ApiError(
            400, f"m is given twice and differs: {from_name} in the model name, {from_body} in the body", "m"
        )
    m = from_name if from_name is not None else from_body
    if index == -1:
        if m not in (None, 0.0):
            raise ApiError(400, f"{served.base} is the base model (no Δ): m must be 0 or absent, got {m}", "m")
        return (), 0.0
    if m is None:
        raise ApiError(
            400,
            f"m is missing for run {name!r}: give the multiplier as extra_body={{'m': 4}} or model='{name}@4' "
            "(m=0 is the base model)",
            "m",
        )
    _check_limits(served, {index: m})
    return steering({index: m}), m


def _content(value, i: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        return "".join(p["text"] for p in value)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def chat_turns(body: dict) -> list[dict]:
    """The request's messages as {role, content} turns, checked."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", "messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "developer"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant", f"messages[{i}]")
        if message.get("name") is not None and not isinstance(message["name"], str):
            raise ApiError(400, f"messages[{i}].name must be a string", f"messages[{i}].name")
        role = "system" if message["role"] == "developer" else message["role"]
        turns.append({"role": role, "content": _content(message.get("content"), i)})
    return turns


def completion_prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be a non-empty string (one prompt per request)", "prompt")
    return prompt


def tokenise(served: Served, prompt: str | list[dict]) -> tuple[str, tuple[int, ...]]:
    """(prompt text, its token ids): a chat's turns rendered through the model's chat template
    with the generation prompt. Runs in a worker thread, off the event loop."""
    with served.tokenizer_lock:
        if isinstance(prompt, list):
            if getattr(served.tokenizer, "chat_template", None):
                prompt = served.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            else:
                prompt = "".join(t["content"] + "\n" for t in prompt)
        return prompt, tuple(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def make_job(served: Served, prompt: str, ids: tuple[int, ...], steer: Steering, options: Sampling) -> Job:
    """The engine's row for a request, checked against the context length."""
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
        steer=steer,
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
        return await _complete(served, request, body, chat_turns(body), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _body(request)
        return await _complete(served, request, body, completion_prompt(body), chat=False)

    return app


def _unique_keys(pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ApiError(400, f"the request body gives {twice[0]!r} twice in one object")
    return dict(pairs)


async def _body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw, object_pairs_hook=_unique_keys)
    except ValueError as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


async def disconnected(request: Request) -> None:
    """Return once the client has gone (the body is read by then: the next ASGI message is the
    disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _emitter(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, job: Job):
    """The engine's ``emit`` for ``job``: events go to the request's queue on its event loop; a
    closed loop (the server has gone) means nobody waits, and the row is dropped."""

    def emit(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:
            job.cancelled = True

    return emit


def _error(event: tuple) -> ApiError:
    """The API error of an engine's ("error", kind, message) event."""
    _, kind, message = event
    if kind == CANCELLED:
        return ApiError(
            503,
            f"the request was cancelled (the server is shutting down); retry in {RETRY_AFTER_S} s",
            code="overloaded",
        )
    if kind == OVERFLOW:
        return ApiError(400, f"{message}: lower |m|", "m", "m_out_of_range")
    return ApiError(500, message)


async def _complete(served: Served, request: Request, body: dict, prompt: str | list[dict], chat: bool):
    steer, m = resolve_model(served, body)
    options = sampling(body, chat)
    text, ids = await asyncio.to_thread(tokenise, served, prompt)
    job = make_job(served, text, ids, steer, options)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job.emit = _emitter(loop, events, job)
    try:
        served.engine.submit(job)
    except (QueueFull, ShuttingDown) as err:
        raise ApiError(503, f"{err}; retry in {RETRY_AFTER_S} s", code="overloaded") from None
    served.requests += 1
    reply = Reply(served, body["model"], m, job, chat, options.include_usage)
    if options.stream:
        return StreamingResponse(reply.stream(request, events), media_type="text/event-stream")
    gone = asyncio.ensure_future(disconnected(request))
    whole = asyncio.ensure_future(reply.collect(events))
    try:
        await asyncio.wait({gone, whole}, return_when=asyncio.FIRST_COMPLETED)
        if not whole.done():
            return Response(status_code=499)  # nobody reads it: the client has gone
        return whole.result()
    finally:
        gone.cancel()
        whole.cancel()
        served.engine.cancel(job)  # a no-op for a finished row; frees the row of a client that left


class Reply:
    """The OpenAI response objects of one request (whole or streamed chunks)."""

    def __init__(self, served: Served, model: str, m, job: Job, chat: bool, include_usage: bool) -> None:
        self.served = served
        self.model, self.m, self.job, self.chat, self.include_usage = model, m, job, chat, include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def usage(self) -> dict:
        prompt, completion = len(self.job.ids), len(self.job.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "m": self.m}

    async def collect(self, events: asyncio.Queue) -> dict:
        """The whole reply once the row is done; an error event raises its ``ApiError``."""
        parts = []
        while True:
            event = await events.get()
            if event[0] == "delta":
                parts.append(event[1])
            elif event[0] == "done":
                return self.whole("".join(parts), event[1])
            else:
                raise _error(event)

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

    async def stream(self, request: Request, events: asyncio.Queue) -> AsyncIterator[str]:
        """Server-sent events of the row; a client that leaves cancels it at once."""
        engine = self.served.engine
        gone = asyncio.ensure_future(disconnected(request))
        gone.add_done_callback(lambda task: task.cancelled() or engine.cancel(self.job))
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
                    err = _error(event)
                    error = {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}}
                    yield f"data: {json.dumps(error)}\n\n"
                    return
            if self.include_usage:
                usage = {**self._head(self._chunk_object()), "choices": [], "usage": self.usage()}
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            gone.cancel()
            engine.cancel(self.job)  # a client that went away frees its row at the next step

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"
