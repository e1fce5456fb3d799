"""``python -m steer.generate RUN_DIR --m ... PROMPT``: one column per m holding exactly what
``steer.core.generate`` answers, and bad arguments exit 2 with one line."""

from __future__ import annotations

import pytest

from steer.core.generate import generate
from steer.core.interventions import DynamicAffine
from steer.generate import side_by_side
from steer.generate.__main__ import main
from steer.pairs import render_prompt
from tests.test_serve import diffmean_run


def columns_of(table: str, n: int, width: int) -> list[str]:
    """Undo ``side_by_side``: each column's wrapped lines joined back into words."""
    col = (width - 3 * (n - 1)) // n
    lines = [line.ljust(n * (col + 3)) for line in table.splitlines()[2:]]
    return [" ".join(" ".join(line[j * (col + 3) : j * (col + 3) + col] for line in lines).split()) for j in range(n)]


def test_side_by_side_keeps_every_word_of_every_column_in_its_column():
    texts = ["short", "a much longer answer " * 8, "line one\nline two with more words than fit in one line"]
    table = side_by_side([(f"m = {m}", t) for m, t in zip((-4, 0, 4), texts, strict=True)], width=80)
    assert table.splitlines()[0].split("│")[1].strip() == "m = 0"
    assert all(len(line) <= 80 for line in table.splitlines())
    assert columns_of(table, 3, 80) == [" ".join(t.split()) for t in texts]


def test_cli_prints_what_generate_answers_at_each_m(smol, tmp_path, capsys):
    model, tok = smol
    run_dir = diffmean_run(model, tok, tmp_path / "run", 15)
    prompts = ["Describe your weekend in one sentence.", "Say hi."]
    assert main([str(run_dir), "--m", "-1,0,1.5", "--max-new-tokens", "8", "--width", "150", *prompts]) == 0
    out = capsys.readouterr().out
    iv = DynamicAffine.load(run_dir)
    found = generate(
        model, tok, [render_prompt(tok, p) for p in prompts], intervention=iv, multipliers=[-1, 0, 1.5],
        max_new_tokens=8, progress=False,
    )  # fmt: skip
    for p, prompt in enumerate(prompts):
        table = side_by_side([(f"m = {g.m:g}", g.text) for g in found if g.prompt_index == p], 150)
        assert f"> {prompt}\n\n{table}" in out
    assert "vector Δ at layer 15 (diffmean, sentiment)" in out
    assert len({g.text for g in found if g.prompt_index == 0}) == 3  # the columns differ


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--m", "1", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a run directory" in err
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--m", "-1,x", "hi"])
    assert exit_.value.code == 2 and "--m must be numbers" in capsys.readouterr().err
