"""The library surface: the public names, the run-directory readers and writers (that readers of
runs load no torch is ``tests/test_layers.py``'s), the context's shard/gather, and the size of the
functions in steer/."""

from __future__ import annotations

import ast
import json

import pytest

import steer
from steer import rundir
from steer.stages.context import interleave
from tests.conftest import REPO


def test_every_public_name_resolves():
    for name in steer.__all__:
        assert getattr(steer, name) is not None, name
    assert steer.sweep_pairs.__module__ == "steer.core.sweep" and callable(steer.load_model)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = steer.nothing


def test_update_metrics_merges_sections(tmp_path):
    assert rundir.read_metrics(tmp_path) == {}
    rundir.update_metrics(tmp_path, "judge", {"score": 3.5})
    rundir.update_metrics(tmp_path, "export", {"gguf": True})
    rundir.update_metrics(tmp_path, "judge", {"n": 8})
    want = {"judge": {"score": 3.5, "n": 8}, "export": {"gguf": True}}
    assert rundir.read_metrics(tmp_path) == want == json.loads((tmp_path / rundir.METRICS).read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_shard_and_gather_restore_the_original_order():
    items = list(range(11))
    for world in (1, 2, 3, 4, 11, 12):
        parts = [[x for i, x in enumerate(items) if i % world == rank] for rank in range(world)]
        assert interleave(parts) == items, world


def test_context_shard_and_gather_in_one_process(tmp_path):
    from steer.stages import RunContext, compose_config

    ctx = RunContext(compose_config(["device=cpu"]), tmp_path)
    assert ctx.shard(["a", "b", "c"]) == ["a", "b", "c"]
    assert ctx.gather([1, 2, 3]) == [1, 2, 3]


def function_lengths() -> list[tuple[str, int]]:
    """(place, lines without the docstring) of every function in steer/."""
    out = []
    for path in sorted((REPO / "steer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                doc = node.body[0]
                if (
                    isinstance(doc, ast.Expr)
                    and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)
                ):
                    lines -= doc.end_lineno - doc.lineno + 1
                out.append((f"{path.relative_to(REPO)}:{node.lineno} {node.name}", lines))
    return out


def test_no_function_in_steer_is_longer_than_60_lines():
    assert [(place, n) for place, n in function_lengths() if n > 60] == []
