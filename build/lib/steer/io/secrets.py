"""Keeping secrets out of every file, log and W&B record steer writes.

Two tools, for the two ways a secret travels:

* by **name**: a config key or environment variable whose name says it holds a secret
  (``api_key``, ``hf_token``, ``WANDB_API_KEY``, ``password``) — ``is_secret_name`` and ``scrub``
  blank its value. Names are split into word parts (``_``, ``-``, ``.``, camelCase), so ordinary
  keys that merely contain such a word (``per_token``, ``max_new_tokens``, ``tokenizer``) stay.
* by **value**: a secret pasted into a command line or echoed into a log — ``redact`` removes the
  values of the secret-named environment variables from any text, and ``RedactingFilter`` does
  that to every log record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping

MASK = "***"
# A part that on its own names a secret.
_SECRET_PARTS = frozenset({"apikey", "secret", "secrets", "password", "passwd", "credential", "credentials"})
# "key" names a secret after one of these ("api_key", "private_key", "access_key").
_KEY_QUALIFIERS = frozenset({"api", "private", "access", "secret", "signing", "encryption"})
# "token" is a count or a vocabulary item, not a credential, after one of these ("per_token", "pad_token").
_TOKEN_NOT_SECRET = frozenset(
    {"per", "max", "min", "num", "n", "new", "total", "bos", "eos", "pad", "unk", "sep", "cls", "mask", "special"}
    | {"start", "end", "stop", "first", "last", "next", "prev", "answer", "prompt", "image", "vocab", "add"}
)
# Values shorter than this are never redacted from text: "1" or "true" would blank half a log.
MIN_SECRET_LENGTH = 6


def name_parts(name: str) -> list[str]:
    """Lower-case word parts of a key: ``hfToken`` → [hf, token], ``WANDB_API_KEY`` → [wandb, api, key]."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name))
    return [p for p in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if p]


def is_secret_name(name: str) -> bool:
    """Whether a key or variable name says its value is a secret (see the module docstring)."""
    parts = name_parts(name)
    for i, part in enumerate(parts):
        before = parts[i - 1] if i else ""
        if part in _SECRET_PARTS:
            return True
        if part in ("key", "keys") and before in _KEY_QUALIFIERS:
            return True
        if part == "token" and before not in _TOKEN_NOT_SECRET:
            return True
    return False


def scrub(config: Mapping) -> dict:
    """A copy of ``config`` (nested dicts) with every secret-named key's value replaced by ``MASK``."""
    clean = {}
    for key, value in config.items():
        if is_secret_name(key) and value is not None:
            clean[key] = MASK
        elif isinstance(value, Mapping):
            clean[key] = scrub(value)
        else:
            clean[key] = value
    return clean


def redact_config(config: Mapping, values: Iterable[str] | None = None) -> dict:
    """``scrub(config)`` with, in addition, every known secret value removed from string values
    (a key pasted under an ordinary name, ``note=sk-...``)."""
    values = secret_values() if values is None else list(values)
    clean = {}
    for key, value in scrub(config).items():
        if isinstance(value, Mapping):
            value = redact_config(value, values)
        elif isinstance(value, str):
            value = redact(value, values)
        elif isinstance(value, (list, tuple)):
            value = [redact(v, values) if isinstance(v, str) else v for v in value]
        clean[key] = value
    return clean


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the secret-named environment variables (``WANDB_API_KEY``, ``OPENAI_API_KEY``,
    ``HF_TOKEN``, a judge's key variable...), longest first, too-short ones left out."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str, values: Iterable[str] | None = None) -> str:
    """``text`` with every occurrence of each secret value replaced by ``MASK``; ``values``
    defaults to ``secret_values()`` of the current environment."""
    for value in secret_values() if values is None else sorted(values, key=len, reverse=True):
        if len(value) >= MIN_SECRET_LENGTH:
            text = text.replace(value, MASK)
    return text


def redact_argv(argv: Iterable[str], values: Iterable[str] | None = None) -> list[str]:
    """A command line with secrets removed: the values of secret-named ``key=value`` overrides
    (``judge.api_key=sk-...``, ``--hf-token=...``) and any known secret value anywhere."""
    values = secret_values() if values is None else list(values)
    clean = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and value and is_secret_name(key.lstrip("+~-")):
            arg = f"{key}={MASK}"
        clean.append(redact(arg, values))
    return clean


@contextlib.contextmanager
def argv_redacted() -> Iterator[None]:
    """Inside the block ``sys.argv`` carries no secret (``redact_argv``): libraries that record the
    command line themselves, like W&B's run metadata, record this one. Restored afterwards."""
    original = list(sys.argv)
    sys.argv[:] = redact_argv(original)
    try:
        yield
    finally:
        sys.argv[:] = original


class RedactingFilter(logging.Filter):
    """A logging filter that removes secret values from every record it passes: attach it to a
    handler (``handler.addFilter(RedactingFilter())``) and nothing that handler writes holds them.

    The values are read once, from the environment when the filter is made, plus ``extra``.
    """

    def __init__(self, extra: Iterable[str] = ()) -> None:
        super().__init__()
        self.values = sorted({*secret_values(), *(v for v in extra if len(v) >= MIN_SECRET_LENGTH)}, key=len)[::-1]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.values:
            message = record.getMessage()
            clean = redact(message, self.values)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text, self.values)
        return True
