"""Power-seeking (``dataset=powerseeking``) from BiPO's CSVs or Anthropic's multiple-choice JSONL.

Two formats, told apart by ``dataset.path``:

* **BiPO** (the paper's data): a folder with ``train.csv`` and ``test.csv``, columns
  ``question``, ``matching``, ``not_matching`` (full-sentence answers). q = question,
  A_p = matching, A_n = not_matching. Train: ``n_train`` rows sampled (seeded) from train.csv;
  test: ``n_test`` rows of test.csv (all 200 by default) — the paper's 500 / 200. Rows with an
  empty question (two in BiPO's train.csv) are skipped with a warning.
* **Anthropic advanced-ai-risk** (``power-seeking-inclination.jsonl``; a ``.jsonl`` path, or
  the hub when ``dataset.path`` is unset): ``question`` holds the question and its choices, one
  per line (`` (A) ...``), and ``answer_matching_behavior`` names a letter (" (A)").
  q = the question as given, choices included; A_p = the matching letter with its option text,
  "(A) <text of option A>"; A_n likewise for ``answer_not_matching_behavior``. Seeded split
  ``n_train`` / ``n_test``. BiPO's CSVs were built from the lm_generated_evals file: the same
  questions with the option texts as answers.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from steer.datasets.files import Row, Table, drop_blank, open_table, read_table, split_table
from steer.pairs import PolarityPair, Splits, sample

BIPO_COLUMNS = ("question", "matching", "not_matching")
MC_COLUMNS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
CHOICE = re.compile(r"^\s*\(([A-Z])\)\s?(.*)$")
LETTER = re.compile(r"^\s*\(([A-Z])\)\s*$")
DEFAULT_FILE = "advanced-ai-risk/lm_generated_evals/power-seeking-inclination.jsonl"
BIPO_PAPER_FOLDER = "power-seeking"


def parse_choices(question: str) -> dict[str, str]:
    """Option letter → option text. An option runs from its `` (X)`` line to the next option or
    blank line (so a trailing "Answer:" after a blank line is not part of the last option)."""
    choices: dict[str, list[str]] = {}
    current = None
    for line in question.split("\n"):
        match = CHOICE.match(line)
        if match:
            current = match.group(1)
            choices[current] = [match.group(2).strip()]
        elif current is not None and line.strip():
            choices[current].append(line.strip())
        else:
            current = None
    return {letter: " ".join(parts) for letter, parts in choices.items()}


def choice_answer(row: Row, column: str, choices: dict[str, str]) -> str:
    """The answer ``(X) <option text>`` for the letter in ``column``."""
    letter = LETTER.match(row.text(column))
    if not letter:
        raise ValueError(f"{row.where}: column {column!r} must name one choice like ' (A)', got {row.text(column)!r}")
    option = choices.get(letter.group(1))
    if not option:
        raise ValueError(
            f"{row.where}: column {column!r} names choice ({letter.group(1)}), but the question's choices are "
            f"{', '.join(f'({c})' for c in choices) or 'none'}"
        )
    return f"({letter.group(1)}) {option}"


def mc_pairs(table: Table) -> list[PolarityPair]:
    pairs = []
    for row in drop_blank(table.rows, "question"):
        choices = parse_choices(row.text("question"))
        pairs.append(
            PolarityPair(
                id=f"{row.index:04d}",
                prompt=row.text("question"),
                positive=choice_answer(row, "answer_matching_behavior", choices),
                negative=choice_answer(row, "answer_not_matching_behavior", choices),
            )
        )
    return pairs


def bipo_pairs(table: Table, split: str) -> list[PolarityPair]:
    return [
        PolarityPair(
            id=f"{split}-{row.index:04d}",
            prompt=row.text("question"),
            positive=row.answer("matching"),
            negative=row.answer("not_matching"),
        )
        for row in drop_blank(table.rows, "question")
    ]


def sample_exactly(table: Table, pairs: list[PolarityPair], n: int, seed: int, key: str) -> list[PolarityPair]:
    if n > len(pairs):
        raise ValueError(f"{table.name}: asked for {n} examples (dataset.{key}), the file has {len(pairs)}")
    return sample(pairs, n, seed)


def load_bipo(folder: Path, n_train: int, n_test: int, seed: int) -> Splits:
    missing = [name for name in ("train.csv", "test.csv") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"dataset.path={folder}: BiPO's layout needs train.csv and test.csv (columns "
            f"{', '.join(BIPO_COLUMNS)}); {folder / missing[0]} is missing"
        )
    train = read_table(folder / "train.csv", BIPO_COLUMNS)
    test = read_table(folder / "test.csv", BIPO_COLUMNS)
    digest = hashlib.sha256((train.digest + test.digest).encode()).hexdigest()
    return Splits(
        sample_exactly(train, bipo_pairs(train, "train"), n_train, seed, "n_train"),
        sample_exactly(test, bipo_pairs(test, "test"), n_test, seed, "n_test"),
        digest,
        str(folder),
    )


def check_folder(path: str | None, file: str) -> None:
    """A ``dataset.path`` folder holds one of the two layouts; else say what each needs."""
    folder = Path(path).expanduser() if path else None
    if folder is None or not folder.is_dir():
        return
    if (folder / "test.csv").is_file() or any((folder / f).is_file() for f in (file, Path(file).name)):
        return
    raise FileNotFoundError(
        f"dataset.path={folder} holds no power-seeking data. Expected either BiPO's layout (the paper's data): "
        f"{folder}/train.csv and {folder}/test.csv with columns {', '.join(BIPO_COLUMNS)}; or Anthropic's "
        f"multiple-choice JSONL: {folder}/{Path(file).name} (or {folder}/{file}), or dataset.path pointing at that file"
    )


def is_bipo_folder(path: str | None) -> bool:
    """A folder with BiPO's CSVs (one of them is enough to tell; ``load_bipo`` names a missing one)."""
    return bool(path) and any((Path(path).expanduser() / name).is_file() for name in ("train.csv", "test.csv"))


def name(path: str | None = None, file: str = DEFAULT_FILE) -> str:
    """The data set's name from what it reads. ``powerseeking`` is the paper's data, BiPO's
    ``power-seeking`` folder; another BiPO folder is ``bipo-<folder>``. Anthropic's multiple-choice
    files are other data sets: ``powerseeking-mc`` (the default file), ``airisk-<stem>`` for another
    advanced-ai-risk file, with ``-human`` for the human-written evals."""
    if is_bipo_folder(path):
        folder = Path(path).expanduser().resolve().name
        return "powerseeking" if folder == BIPO_PAPER_FOLDER else f"bipo-{folder}"
    source = Path(path) if path and Path(path).suffix else Path(file)
    stem = "powerseeking-mc" if source.stem == Path(DEFAULT_FILE).stem else f"airisk-{source.stem}"
    return f"{stem}-human" if source.parent.name == "human_generated_evals" else stem


def load(
    path: str | None = None,
    hub: str | None = "Anthropic/model-written-evals",
    file: str = DEFAULT_FILE,
    n_train: int = 500,
    n_test: int = 200,
    seed: int = 0,
    revision: str | None = None,
) -> Splits:
    if is_bipo_folder(path):
        return load_bipo(Path(path).expanduser(), n_train, n_test, seed)
    check_folder(path, file)
    table = open_table(path, hub, file, MC_COLUMNS, revision)
    return split_table(table, mc_pairs(table), n_train, n_test, seed)
