"""``python -m steer.generate RUN_DIR --m -4,0,4 "prompt" ...``: a run's answers at several m, side
by side, for a first look from the shell (the library is ``steer.core.generate``)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence


def side_by_side(columns: Sequence[tuple[str, str]], width: int = 120, gap: str = " │ ") -> str:
    """(header, text) columns laid out next to each other, each wrapped to its share of ``width``
    characters; a text's own line breaks are kept."""
    if not columns:
        return ""
    col = max(12, (width - len(gap) * (len(columns) - 1)) // len(columns))
    wrapped = []
    for header, text in columns:
        lines = [header[:col], "─" * col]
        for paragraph in (text or "∅ (empty)").splitlines() or [""]:
            lines.extend(textwrap.wrap(paragraph, col, break_long_words=True, replace_whitespace=False) or [""])
        wrapped.append(lines)
    height = max(len(lines) for lines in wrapped)
    rows = [gap.join(lines[i].ljust(col) if i < len(lines) else " " * col for lines in wrapped) for i in range(height)]
    return "\n".join(row.rstrip() for row in rows)
