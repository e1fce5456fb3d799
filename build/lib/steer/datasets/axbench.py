"""AxBench concept10 (``dataset=axbench``): one concept's instructions, with and without the concept.

Concept10 is the first 10 concepts of AxBench's Concept500; the default is the Gemma-2-9B
layer-20 set (``prod_9b_l20_v1``, on the hub ``9b/l20``). Of the training file's rows, a
concept's are those with ``category == "positive"`` and its ``concept_id``: 72 instructions
(``input``) with a response that weaves the concept in (``output``). They are re-split seeded
64 train / 8 test. A_p = ``output`` (whitespace rule); A_n = ``None``: the model's own greedy
response to the same instruction, generated once per model by the data stage and cached, as
AxBench builds its preference pairs. Every pair keeps ``concept_id`` and ``concept`` (the
concept's description, from ``metadata.jsonl`` beside the parquet, else the rows'
``output_concept``) in its meta: the judge needs them.

Sources: a local AxBench release folder (``<release>/generate/train_data.parquet`` and
``generate/metadata.jsonl``) or parquet file via ``dataset.path``, else ``dataset.file`` of the
hub data set ``dataset.hub`` (``pyvene/axbench-concept500``, file ``9b/l20/train/data.parquet``).
"""

from __future__ import annotations

from pathlib import Path

from steer.datasets.files import Row, Table, drop_blank, find_file, hub_table, read_table, split_table
from steer.pairs import PolarityPair, Splits

COLUMNS = ("input", "output", "category", "concept_id")
RELEASE_FILES = ("generate/train_data.parquet", "train_data.parquet")
METADATA = "metadata.jsonl"
DEFAULT_HUB = "pyvene/axbench-concept500"
DEFAULT_FILE = "9b/l20/train/data.parquet"
# The paper's release (Gemma-2-9B, layer 20): its runs keep the plain name ``axbench-c<N>``.
PAPER_RELEASES = ("prod_9b_l20_v1", "9b-l20")


def release_name(path: str | None, hub: str | None, file: str) -> str:
    """Which AxBench release a source is: a local release folder's name (or the folder above
    ``generate/``), a parquet file's stem, or the hub file's folders (``9b/l20/train/...`` → ``9b-l20``)."""
    if path:
        source = Path(path).expanduser().resolve()
        if source.suffix:
            return source.parent.parent.name if source.parent.name == "generate" else source.stem
        return source.name
    parts = [p for p in Path(file).with_suffix("").parts if p not in ("train", "data")]
    release = "-".join(parts)
    return release if hub == DEFAULT_HUB else f"{str(hub).replace('/', '-')}-{release}"


def name(concept_id: int = 0, path: str | None = None, hub: str | None = DEFAULT_HUB, file: str = DEFAULT_FILE) -> str:
    """``axbench-c<N>`` for the paper's release, ``axbench-<release>-c<N>`` for any other."""
    release = release_name(path, hub, file)
    return f"axbench-c{concept_id}" if release in PAPER_RELEASES else f"axbench-{release}-c{concept_id}"


def read_source(
    path: str | None, hub: str | None, file: str, revision: str | None = None
) -> tuple[Table, Table | None]:
    """The training table and, for a local release, its ``metadata.jsonl`` (None when absent)."""
    if path:
        parquet = find_file(path, (*RELEASE_FILES, file, Path(file).name))
        metadata = parquet.parent / METADATA
        return read_table(parquet, COLUMNS), read_table(metadata) if metadata.is_file() else None
    if not hub:
        raise ValueError("set dataset.path (an AxBench release folder or parquet) or dataset.hub")
    return hub_table(hub, file, COLUMNS, revision), None


def concept_text(concept_id: int, positives: list[Row], metadata: Table | None) -> str:
    """The concept's description: ``metadata.jsonl`` if there is one, else ``output_concept``."""
    if metadata is not None:
        for row in metadata.rows:
            if row.integer("concept_id") == concept_id:
                return row.text("concept")
        raise ValueError(f"{metadata.name}: no row for concept_id {concept_id}")
    texts = {row.text("output_concept") for row in positives}
    if len(texts) != 1:
        raise ValueError(
            f"{positives[0].where}: concept {concept_id} has {len(texts)} different output_concept values "
            "(expected one description per concept)"
        )
    return texts.pop()


def load(
    concept_id: int = 0,
    path: str | None = None,
    hub: str | None = DEFAULT_HUB,
    file: str = DEFAULT_FILE,
    n_train: int = 64,
    n_test: int = 8,
    seed: int = 0,
    revision: str | None = None,
) -> Splits:
    if not isinstance(concept_id, int) or isinstance(concept_id, bool) or concept_id < 0:
        raise ValueError(f"dataset.concept_id must be a non-negative integer, got {concept_id!r}")
    table, metadata = read_source(path, hub, file, revision)
    positives = [
        row for row in table.rows if row.text("category") == "positive" and row.integer("concept_id") == concept_id
    ]
    if not positives:
        known = sorted({r.integer("concept_id") for r in table.rows if r.text("category") == "positive"})
        raise ValueError(
            f"{table.name}: no positive rows for dataset.concept_id={concept_id} (concepts: {known[0]}..{known[-1]})"
            if known
            else f"{table.name}: no positive rows at all"
        )
    concept = concept_text(concept_id, positives, metadata)
    pairs = [
        PolarityPair(
            id=f"c{concept_id}-{row.index:04d}",
            prompt=row.text("input"),
            positive=row.answer("output"),
            negative=None,
            meta={"concept_id": concept_id, "concept": concept},
        )
        for row in drop_blank(positives, "input")
    ]
    return split_table(table, pairs, n_train, n_test, seed)
