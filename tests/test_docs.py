"""The user's guide builds, the README stays short, and the commands they show name real things.

The site is built by ``mkdocs build --strict`` exactly as ``make docs`` does: a broken link, a
missing anchor, a page outside the nav or a docstring mkdocstrings cannot render fails it. The
command check is cheap honesty, not a run: every ``make X`` in a bash block names a Makefile
target, every ``.venv/bin/python FILE`` an existing file and every ``.venv/bin/python -m MODULE``
an importable module (running them is the lead's full check); every repository path the prose
cites exists.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO, python

README = REPO / "README.md"
README_LIMIT = 12 * 1024  # bytes: a README read in two minutes
PAGES = sorted((REPO / "docs").glob("*.md"))
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# A repository path inside an inline code span: steer/..., steer/conf/..., experiments/..., tests/..., docs/...
CITED = re.compile(r"(?:^|[\s(])((?:steer|conf|experiments|tests|docs)/[\w./-]*)")


def makefile_targets() -> set[str]:
    """Targets of the Makefile: every ``name:`` rule and the names listed in ``PAPER :=``."""
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_-]+)\s*:(?!=)", text, re.MULTILINE))
    for line in re.findall(r"^PAPER\s*:=(.*)$", text, re.MULTILINE):
        targets.update(line.split())
    return targets


def bash_commands(path: Path) -> list[str]:
    """The command lines of a Markdown file's bash blocks, comments dropped."""
    lines = []
    for block in BASH_BLOCK.findall(path.read_text()):
        for line in block.replace("\\\n", " ").splitlines():  # a trailing backslash continues the line
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def command_problem(command: str, targets: set[str]) -> str | None:
    """What is wrong with a ``make`` or ``.venv/bin/python`` command line (None: nothing, or another command)."""
    words = shlex.split(command)
    if words[0] == "make":
        named = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
        missing = [t for t in named if t not in targets]
        return f"make target(s) {missing} not in the Makefile" if missing else None
    if words[0] == ".venv/bin/python":
        if words[1] == "-m":
            return None if importlib.util.find_spec(words[2]) else f"module {words[2]} not importable"
        return None if (REPO / words[1]).is_file() else f"file {words[1]} does not exist"
    return None


def cited_paths(path: Path) -> list[str]:
    """Repository paths named in the prose of a Markdown file (code blocks are examples of new files;
    spans with NAME or <...> are patterns)."""
    prose = FENCED.sub("", path.read_text())
    found = []
    for span in re.findall(r"`([^`\n]+)`", prose):
        if "NAME" in span or "<" in span or "*" in span:
            continue
        found += [p.rstrip(".,") for p in CITED.findall(" " + span)]
    return found


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT})"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_commands_name_real_targets_and_files(path):
    targets = makefile_targets()
    assert {"run", "test", "test-slow", "docs", "table2", "front", "plan"} <= targets
    commands = bash_commands(path)
    problems = [f"{c!r}: {p}" for c in commands if (p := command_problem(c, targets))]
    assert not problems, f"{path.name}: " + "; ".join(problems)


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_cited_files_exist(path):
    cited = cited_paths(path)
    missing = [p for p in cited if not (REPO / p).exists()]
    assert not missing, f"{path.name} cites files that do not exist: {missing}"


def test_readme_shows_the_two_commands_and_links_every_page():
    text = README.read_text()
    commands = bash_commands(README)
    assert "make run" in commands and "make test" in commands
    for page in PAGES:
        assert f"docs/{page.name}" in text, f"README.md does not link docs/{page.name}"


def test_path_check_reads_spans_not_examples(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "See `steer/nope.py` and (`steer/conf/config.yaml`).\n\n```python\n# steer/example.py\n```\n`steer/NAME.py`\n"
    )
    assert cited_paths(page) == ["steer/nope.py", "steer/conf/config.yaml"]


def test_command_check_catches_a_wrong_target_file_and_module():
    targets = makefile_targets()
    assert command_problem("make tabel2 DATASETS=x", targets)
    assert command_problem(".venv/bin/python experiments/nope.py", targets)
    assert command_problem(".venv/bin/python -m steer.nope", targets)
    assert command_problem('make table2 ARGS="model=gemma-2-9b-it"', targets) is None


@pytest.mark.e2e
def test_site_builds_strict(tmp_path):
    """``make docs`` in a temporary folder: nav, links, anchors and the API reference all resolve."""
    site = str(tmp_path / "site")
    done = python("-m", "mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in (
        "steer.core.interventions.DynamicAffine",
        "steer.analysis.fit.fit_sweep",
        "steer.export.EXPORTS",
        "steer.stages.STAGES",
    ):
        assert f'id="{name}"' in api, f"the API reference lacks {name}"
    for page in PAGES:
        slug = "" if page.stem == "index" else f"{page.stem}/"
        assert (tmp_path / "site" / slug / "index.html").is_file(), f"{page.name} was not built"
