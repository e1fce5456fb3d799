"""The architecture is checked, not hoped for: the import contracts of pyproject.toml hold on the real
tree, break when an upward import or a torch import is added, and the torch-free readers load no torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, python

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = "steer's packages by layer: imports only go down"
TORCH_FREE = "Readers of runs, data and fits load no torch"
NO_STAGES = "Reports read finished runs; they never run stages"
ACYCLIC = "No import circle among the modules of any steer package"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the tree at ``root`` (its steer/ and pyproject.toml), as `make lint` runs it."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.e2e
def test_the_tree_keeps_every_contract():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for contract in (LAYERS, TORCH_FREE, NO_STAGES, ACYCLIC):
        assert f"{contract} KEPT" in proc.stdout
    assert "Contracts: 4 kept, 0 broken." in proc.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("module", "line", "broken", "reason"),
    [
        ("io/atomic.py", "import steer.stages", LAYERS, "steer.io.atomic -> steer.stages"),
        ("report/runs.py", "import steer.stages", NO_STAGES, "steer.report.runs -> steer.stages"),
        ("analysis/fit.py", "import torch", TORCH_FREE, "steer.analysis is not allowed to import torch"),
        ("report/tables.py", "import steer.core.models", TORCH_FREE, "steer.core.models -> torch"),
        ("judge/select.py", "import steer.export", LAYERS, "steer.judge.select -> steer.export"),
        ("report/runs.py", "import steer.report.r2", ACYCLIC, "No cycles are allowed in steer.report"),
    ],
)
def test_a_forbidden_import_fails_the_contract(tmp_path, module, line, broken, reason):
    """A copy of the package with one forbidden import added: lint-imports fails, naming the contract
    and the import."""
    shutil.copytree(REPO / "steer", tmp_path / "steer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    path = tmp_path / "steer" / module
    source = path.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in source
    path.write_text(source.replace(marker, f"{marker}\n{line}  # noqa\n", 1))
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{broken} BROKEN" in proc.stdout
    assert reason in proc.stdout


@pytest.mark.e2e
def test_readers_of_runs_load_no_torch():
    modules = [
        "steer.report",
        "steer.io",
        "steer.analysis",
        "steer.report.__main__",  # imports every report (r2, table3, figures, front); main() does not run
        "steer.report.tables",
        "steer.rundir",
        "steer.pairs",
        "steer.datasets",
        "steer.analysis.fit",
        "steer.analysis.bootstrap",
        "steer.analysis.plots",
        "steer.io.artifacts",
        "steer.io.provenance",
    ]
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'accelerate')))"
    )
    proc = python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
