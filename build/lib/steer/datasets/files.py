"""Rows of a data set file, read from a local path or the Hugging Face hub, each knowing where it is.

Loaders read JSONL, CSV and parquet through ``read_table`` (local) or ``hub_table`` (a hub file
downloaded by ``huggingface_hub``, then read as a local one), then pull typed fields with
``Row.text``/``Row.integer``/``Row.answer``. Every row carries its location — ``file:line N`` for
JSONL and CSV (the physical line where the row starts), ``file: row N`` for parquet (1-based data
row) — so a missing column, an empty file or a value of the wrong type fails with the file and row
named, before any model work. ``Table.digest`` (sha256 of the file bytes, a hub file's too) keys
caches derived from the data.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from steer.io.provenance import file_digest
from steer.pairs import PolarityPair, Splits, seeded_split, strip_answer

log = logging.getLogger("steer")

FORMATS = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Row:
    """One data row, its 0-based position among the file's data rows, and where it is."""

    values: dict
    index: int
    where: str

    def _get(self, column: str):
        if column not in self.values:
            raise ValueError(
                f"{self.where}: missing column {column!r} (the row has: {', '.join(map(str, self.values))})"
            )
        return self.values[column]

    def text(self, column: str) -> str:
        value = self._get(column)
        if not isinstance(value, str):
            raise ValueError(f"{self.where}: column {column!r} must be a string, got {type(value).__name__} {value!r}")
        return value

    def integer(self, column: str) -> int:
        value = self._get(column)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(
                f"{self.where}: column {column!r} must be an integer, got {type(value).__name__} {value!r}"
            )
        return value

    def answer(self, column: str) -> str:
        """An answer field under the whitespace rule (``steer.pairs.strip_answer``); empty is an error."""
        value = strip_answer(self.text(column))
        if not value:
            raise ValueError(f"{self.where}: column {column!r} is empty: an answer needs text")
        return value


@dataclass(frozen=True)
class Table:
    """The rows of one file, what it was read from, and a digest of its content."""

    rows: list[Row]
    name: str
    digest: str


def check_columns(name: str, where: str, present: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise ValueError(f"{name}: {where}: missing column {missing[0]!r} (the file has: {', '.join(present)})")


SNIFF = 1 << 16  # bytes read ahead so that a binary file is named as such, not by its first parse error


def not_text(path: Path, line: int, byte: int, offset: int) -> ValueError:
    return ValueError(
        f"{path}:line {line}: not UTF-8 text (byte 0x{byte:02x} at offset {offset}); "
        f"expected one of {', '.join(FORMATS)} — is this the data file?"
    )


def text_lines(path: Path) -> Iterator[str]:
    """The file's lines as UTF-8 text, read as a stream (an error on line 1 of a large file is found
    without reading the rest); undecodable bytes fail naming the file, the line and the byte."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF)
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 3:  # not a character cut at the end of the block
                raise not_text(path, head.count(b"\n", 0, err.start) + 1, head[err.start], err.start) from None
        fh.seek(0)
        offset = 0
        for lineno, raw in enumerate(fh, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise not_text(path, lineno, raw[err.start], offset + err.start) from None
            offset += len(raw)


def _jsonl_rows(path: Path) -> list[Row]:
    rows: list[Row] = []
    for lineno, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:line {lineno}"
        try:
            values = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(values).__name__}")
        rows.append(Row(values, len(rows), where))
    return rows


def _csv_rows(path: Path, columns: Sequence[str]) -> list[Row]:
    rows: list[Row] = []
    reader = csv.reader(text_lines(path))
    header = next(reader, None)
    if not header:
        return []
    check_columns(str(path), "line 1 (header)", header, columns)
    start = reader.line_num + 1
    for fields in reader:
        where = f"{path}:line {start}"
        start = reader.line_num + 1
        if not fields:
            continue
        if len(fields) != len(header):
            raise ValueError(f"{where}: expected {len(header)} fields ({', '.join(header)}), got {len(fields)}")
        rows.append(Row(dict(zip(header, fields, strict=True)), len(rows), where))
    return rows


def _parquet_rows(path: Path, columns: Sequence[str]) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a readable parquet file ({err})") from err
    check_columns(str(path), "schema", table.column_names, columns)
    return [Row(values, i, f"{path}: row {i + 1}") for i, values in enumerate(table.to_pylist())]


def read_table(path: str | Path, columns: Sequence[str] = ()) -> Table:
    """The rows of a local ``.jsonl``, ``.csv`` or ``.parquet`` file; an empty file is an error.

    ``columns`` are checked up front where the format has a header (CSV, parquet); JSONL rows
    are checked as they are used.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif suffix == ".csv":
        rows = _csv_rows(path, columns)
    elif suffix == ".parquet":
        rows = _parquet_rows(path, columns)
    else:
        raise ValueError(f"{path}: unknown file type {suffix!r} (expected one of {', '.join(FORMATS)})")
    if not rows:
        raise ValueError(f"{path}: the file is empty (no data rows)")
    return Table(rows, str(path), file_digest(path))


def hub_file(repo: str, file: str, revision: str | None = None) -> tuple[Path, str]:
    """(local path, source) of ``file`` in the hub data set ``repo`` at ``revision`` (a branch, tag or
    commit; None = the main branch), through ``huggingface_hub``: downloaded once into its cache,
    read from there offline. The source names the commit the revision resolved to, so a change pushed
    to the branch is another source (and another fingerprint). A local folder in the hub layout
    stands in for a repo (a mirror). Fails naming ``dataset.path`` when the hub cannot be reached
    (offline, or ``HF_HUB_OFFLINE=1`` with nothing cached), so the fix is one override away.
    """
    folder = Path(repo).expanduser()
    if folder.is_dir():
        return find_file(folder, [file]), f"{folder}/{file}"
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo, file, repo_type="dataset", revision=revision))
    except Exception as err:  # the hub client raises many types (connection, offline, not found)
        at = f" at revision {revision}" if revision else ""
        raise ValueError(
            f"could not load {file} from the Hugging Face hub data set {repo}{at} ({type(err).__name__}: {err}). "
            f"Offline or no access? Download the file and set dataset.path=/local/copy/of/{Path(file).name} "
            "(or a folder holding it)"
        ) from err
    commit = path.parents[len(Path(file).parts) - 1].name  # <cache>/snapshots/<commit>/<file>
    return path, f"hub:{repo}@{commit}/{file}"


def hub_table(repo: str, file: str, columns: Sequence[str] = (), revision: str | None = None) -> Table:
    """The rows of ``file`` in the hub data set ``repo`` (``hub_file``), read as a local file."""
    path, source = hub_file(repo, file, revision)
    table = read_table(path, columns)
    return Table(table.rows, source, table.digest)


def find_file(path: str | Path, candidates: Sequence[str]) -> Path:
    """``path`` itself if it is a file, else the first of ``candidates`` inside the folder ``path``."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"dataset.path={path}: no such file or folder")
    for candidate in candidates:
        if (path / candidate).is_file():
            return path / candidate
    raise FileNotFoundError(
        f"dataset.path={path} is a folder without {' or '.join(candidates)}: point dataset.path at the file"
    )


def drop_blank(rows: Sequence[Row], column: str) -> list[Row]:
    """The rows whose ``column`` has text; blank ones are skipped with a warning naming them.

    A query with no text cannot make a polarity pair (BiPO's power-seeking ``train.csv`` has two
    such rows); a missing column or a non-string value is still an error (``Row.text``).
    """
    kept = [r for r in rows if r.text(column).strip()]
    skipped = [r.where for r in rows if not r.text(column).strip()]
    if skipped:
        log.warning("skipped %d row(s) with an empty %r: %s", len(skipped), column, "; ".join(skipped))
    return kept


def open_table(
    path: str | None, hub: str | None, file: str, columns: Sequence[str] = (), revision: str | None = None
) -> Table:
    """A local copy when ``path`` is set (the file, or a folder holding ``file`` or its bare name),
    else ``file`` of the hub data set ``hub`` at ``revision``."""
    if path:
        return read_table(find_file(path, (file, Path(file).name)), columns)
    if not hub:
        raise ValueError("set dataset.path (a local file or folder) or dataset.hub (a Hugging Face data set id)")
    return hub_table(hub, file, columns, revision)


def split_table(table: Table, pairs: Sequence[PolarityPair], n_train: int, n_test: int, seed: int) -> Splits:
    """The seeded train/test split of the pairs read from ``table``, carrying its digest."""
    try:
        splits = seeded_split(pairs, n_train, n_test, seed)
    except ValueError as err:
        raise ValueError(f"{table.name}: {err} (set dataset.n_train / dataset.n_test)") from err
    return Splits(splits.train, splits.test, table.digest, table.name)
