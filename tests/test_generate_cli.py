"""``python -m steer.generate RUN_DIR --m ... PROMPT``: one column per m holding exactly what
``steer.core.generate`` answers, several runs composed with one ``--m`` per run, and bad
arguments (or runs that cannot compose) exit 2 with one line."""

from __future__ import annotations

import pytest

from steer import rundir
from steer.core.generate import generate
from steer.core.interventions import DynamicAffine
from steer.generate import side_by_side
from steer.generate.__main__ import main
from steer.pairs import render_prompt
from tests.conftest import diffmean_run


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


def test_cli_composes_several_runs_with_one_m_per_run(smol, tmp_path, capsys):
    model, tok = smol
    a, b = diffmean_run(model, tok, tmp_path / "a", 15), diffmean_run(model, tok, tmp_path / "b", 10)
    prompt = "Say hi."
    assert main([str(a), str(b), "--m", "1.5,0", "--m", "-2,0", "--max-new-tokens", "8", "--width", "150", prompt]) == 0
    out = capsys.readouterr().out
    found = generate(
        model, tok, [render_prompt(tok, prompt)], intervention=[DynamicAffine.load(a), DynamicAffine.load(b)],
        multipliers=[(1.5, -2.0), (0.0, 0.0)], max_new_tokens=8, progress=False,
    )  # fmt: skip
    assert side_by_side([("m = 1.5, -2", found[0].text), ("m = 0, 0", found[1].text)], 150) in out
    assert found[0].text != found[1].text
    assert "layer15" in out and "layer10" in out


def test_cli_refuses_what_cannot_compose(smol, tmp_path, capsys):
    model, tok = smol
    a, b = diffmean_run(model, tok, tmp_path / "a", 15), diffmean_run(model, tok, tmp_path / "b", 10)
    assert main([str(a), str(a), "--m", "1", "--m", "2", "hi"]) == 2
    assert "composed with itself" in capsys.readouterr().err
    assert main([str(a), str(b), "--m", "1", "hi"]) == 2
    assert "give one --m per run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([str(a), str(b), "--m", "1,2", "--m", "1", "hi"])
    assert exit_.value.code == 2 and "as many values" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    for name in (rundir.META, rundir.WEIGHTS):
        (other / name).write_bytes((b / name).read_bytes())
    config = rundir.read_config(b)
    rundir.write_config(other, {**config, "model": {"name": "qwen", "source": "Qwen/Qwen2.5-7B-Instruct"}})
    assert main([str(a), str(other), "--m", "1", "--m", "1", "hi"]) == 2
    assert "different base models" in capsys.readouterr().err
