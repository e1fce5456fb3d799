"""Every judge answer on disk, so a re-run (or a run that died half way) pays for nothing twice.

One SQLite file under ``$STEER_CACHE/judge`` (WAL mode, a busy timeout): each answer is one row
written in one statement, so a crash never leaves half an answer, and several processes may share
the file. The key is a hash of everything that determines the answer: the judge model, the full
messages, temperature, max tokens, the rubric version and how many top log-probs were asked for.
Within one process the cache is used from the event loop's thread only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from steer.io.cache import cache_root

CACHE_FILE = "answers.sqlite"


def default_cache_dir() -> Path:
    return cache_root() / "judge"


def answer_key(
    model: str,
    messages: Sequence[dict[str, str]],
    temperature: float,
    max_tokens: int,
    rubric_version: str,
    top_logprobs: int = 0,
) -> str:
    """The cache key of one judge call: sha256 of its canonical JSON."""
    payload = {
        "model": model,
        "messages": list(messages),
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
        "rubric_version": rubric_version,
        "top_logprobs": int(top_logprobs),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AnswerCache:
    """Key → answer (a JSON object). ``hits``/``misses`` count the lookups of this instance."""

    def __init__(self, directory: str | Path | None = None) -> None:
        directory = Path(directory) if directory is not None else default_cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILE
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: dict) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)", (key, json.dumps(value, ensure_ascii=False))
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()
