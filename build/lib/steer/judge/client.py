"""The one judge client: the official ``openai`` package's ``AsyncOpenAI`` against any
OpenAI-compatible endpoint (OpenAI itself, or a local ``transformers serve``).

- Every answer goes through ``AnswerCache`` first; only misses reach the endpoint.
- The endpoint is resolved lazily by ``connect()`` on the first miss, so a fully cached run starts
  no server and makes no HTTP call.
- Concurrency is bounded by a semaphore; retries with exponential backoff and the per-request
  timeout are the ``openai`` client's own (``max_retries``, ``timeout``).
- A call that still fails after the retries ends the batch with ``JudgeError`` once the calls in
  flight have finished; every answer received before is already in the cache, and the error carries
  the answers so far, so the caller can record them and a re-run resumes.
- ``Usage`` counts HTTP calls, cache hits, prompt/completion tokens and the cost from ``PRICES``.
The API key is read by ``connect()`` and only ever handed to the ``openai`` client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from steer.judge.cache import AnswerCache, answer_key

log = logging.getLogger("steer")

# US dollars per million (prompt, completion) tokens. A model not listed has an unknown cost
# (None), except local endpoints, which cost nothing.
PRICES = {"gpt-4.1-mini": (0.40, 1.60)}


def price(model: str) -> tuple[float, float] | None:
    """The price of ``model`` per million tokens, dated snapshots (``gpt-4.1-mini-2025-04-14``) included."""
    for name, value in PRICES.items():
        if model == name or model.startswith(name + "-20"):
            return value
    return None


@dataclass(frozen=True)
class Call:
    """One judge request: the rubric it belongs to (name and version) and its messages."""

    rubric: str
    version: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int


@dataclass(frozen=True)
class Answer:
    """The judge's reply; ``logprobs`` as [(token, [(alternative, log-prob), ...]), ...] or None."""

    text: str
    logprobs: list | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool


@dataclass
class Usage:
    calls: int = 0  # HTTP requests answered by the endpoint
    cached: int = 0  # answers taken from the cache
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    seconds: float = 0.0  # wall time of the batches that made HTTP calls

    def as_dict(self) -> dict:
        out = asdict(self)
        out["calls_per_s"] = self.calls / self.seconds if self.seconds > 0 else None
        return out


class JudgeError(RuntimeError):
    """The endpoint failed after the retries; ``answers`` holds what was answered (None elsewhere)."""

    def __init__(self, message: str, answers: list[Answer | None]) -> None:
        super().__init__(message)
        self.answers = answers


@dataclass
class JudgeClient:
    """Judge calls for one judge model. ``connect() -> (base_url, api_key)`` runs on the first
    cache miss (it may start a local server)."""

    model: str
    connect: Callable[[], tuple[str, str]]
    cache: AnswerCache
    temperature: float = 0.0
    top_logprobs: int = 0
    concurrency: int = 8
    max_retries: int = 3
    timeout: float = 60.0
    local: bool = False
    # A bar over the calls that reach the endpoint (rate and ETA); cache hits are instant.
    progress: bool = False
    usage: Usage = field(default_factory=Usage)
    _endpoint: tuple[str, str] | None = field(default=None, repr=False)

    def key(self, call: Call) -> str:
        return answer_key(self.model, call.messages, self.temperature, call.max_tokens, call.version, self.top_logprobs)

    @property
    def base_url(self) -> str | None:
        return self._endpoint[0] if self._endpoint else None

    def judge(self, calls: Sequence[Call]) -> list[Answer]:
        """The answers to ``calls``, in order; raises ``JudgeError`` (with the partial answers)."""
        answers: list[Answer | None] = [None] * len(calls)
        todo = []
        for i, call in enumerate(calls):
            hit = self.cache.get(self.key(call))
            if hit is None:
                todo.append(i)
            else:
                answers[i] = Answer(**{**hit, "cached": True})
                self.usage.cached += 1
        if todo:
            if self._endpoint is None:  # before the clock: a local server's start-up is not judging time
                self._endpoint = self.connect()
            start = time.perf_counter()
            try:
                asyncio.run(self._fetch(calls, todo, answers))
            finally:
                self.usage.seconds += time.perf_counter() - start
        return answers  # type: ignore[return-value]

    async def _fetch(self, calls: Sequence[Call], todo: list[int], answers: list[Answer | None]) -> None:
        from openai import AsyncOpenAI

        base_url, api_key = self._endpoint
        client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=self.max_retries, timeout=self.timeout)
        gate = asyncio.Semaphore(self.concurrency)
        bar = tqdm(total=len(todo), desc=f"judge {self.model}", unit="call", disable=not self.progress)

        async def one(i: int) -> None:
            async with gate:
                answers[i] = await self._ask(client, calls[i])
                bar.update()

        try:
            results = await asyncio.gather(*(one(i) for i in todo), return_exceptions=True)
        finally:
            bar.close()
            await client.close()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            done = sum(a is not None for a in answers)
            raise JudgeError(
                f"judge {self.model} at {base_url}: {len(errors)} of {len(todo)} calls failed after "
                f"{self.max_retries} retries (timeout {self.timeout} s): {type(errors[0]).__name__}: {errors[0]}. "
                f"{done} of {len(answers)} answers are in the cache ({self.cache.path}); re-run to resume.",
                answers,
            ) from errors[0]

    async def _ask(self, client, call: Call) -> Answer:
        extra = {"logprobs": True, "top_logprobs": self.top_logprobs} if self.top_logprobs else {}
        response = await client.chat.completions.create(
            model=self.model,
            messages=list(call.messages),
            temperature=self.temperature,
            max_tokens=call.max_tokens,
            **extra,
        )
        choice = response.choices[0]
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = [
                [t.token, [[alt.token, alt.logprob] for alt in (t.top_logprobs or [])]] for t in choice.logprobs.content
            ]
        usage = response.usage
        answer = Answer(
            text=choice.message.content or "",
            logprobs=logprobs,
            prompt_tokens=int(usage.prompt_tokens) if usage else 0,
            completion_tokens=int(usage.completion_tokens) if usage else 0,
            cached=False,
        )
        self.cache.put(self.key(call), {k: v for k, v in asdict(answer).items() if k != "cached"})
        self._count(answer)
        return answer

    def _count(self, answer: Answer) -> None:
        self.usage.calls += 1
        self.usage.prompt_tokens += answer.prompt_tokens
        self.usage.completion_tokens += answer.completion_tokens
        if self.local:
            return
        rates = price(self.model)
        if rates is None or self.usage.cost_usd is None:
            self.usage.cost_usd = None
            return
        self.usage.cost_usd += (answer.prompt_tokens * rates[0] + answer.completion_tokens * rates[1]) / 1e6
