"""The one table builder (steer.report.tables): one frame, three formats that show the same cells;
LaTeX escaping checked against a hand-written known-good string (and compiled where pdflatex exists)."""

from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest
from synthetic_runs import markdown_rows

from steer.analysis.bootstrap import Interval
from steer.report.tables import Cell, latex_escape, write_table

NASTY = r"my_m 9% R&D ~v ^b \x"
NAMES = {"model": "Model", "layer": "Layer"}
GROUPS = {"pref": "Pref"}


def frame() -> pd.DataFrame:
    """Two rows under a label group and a "pref" group: a mean of two runs with an interval, a missing
    cell, a plain number, and a label full of LaTeX's special characters."""
    columns = pd.MultiIndex.from_tuples([("", "model"), ("", "layer"), ("pref", "Psy"), ("pref", "Avg"), ("", "m")])
    rows = [
        [NASTY, 3, Cell(0.9, 2, Interval(0.8, 0.95, 100)), Cell(None), 2.0],
        ["plain", 12, Cell(0.25, 1), Cell(0.5), 0.5],
    ]
    return pd.DataFrame(rows, columns=columns)


KNOWN_GOOD_TEX = r"""\begin{table}
\centering
\caption[Table 9: R$^{2}$ \& co]{Table 9: R$^{2}$ \& co. 95 \% intervals; --- = none; $\delta$ \textasciitilde{} 1.}
\label{tab:table9}
\begin{tabular}{llrrr}
\toprule
\multicolumn{2}{c}{} & \multicolumn{2}{c}{Pref} &  \\
Model & Layer & Psy & Avg & m \\
\midrule
my\_m 9\% R\&D \textasciitilde{}v \textasciicircum{}b \textbackslash{}x & 3 & 0.900 [0.800, 0.950] (n=2) & --- & 2 \\
plain & 12 & 0.250 & 0.500 & 0.5 \\
\bottomrule
\end{tabular}
\end{table}
"""


@pytest.fixture
def written(tmp_path):
    return write_table(
        tmp_path,
        "table9",
        frame(),
        title="Table 9: R² & co",
        caption="95 % intervals; — = none; δ ~ 1.",
        names=NAMES,
        groups=GROUPS,
        appendix=["", "## Runs used (2)"],
    )


def test_latex_escapes_every_special_character():
    assert latex_escape(r"_ % & ~ ^ \ # $ { }") == (
        r"\_ \% \& \textasciitilde{} \textasciicircum{} \textbackslash{} \# \$ \{ \}"
    )
    assert latex_escape("R² ± 1 — δ") == r"R$^{2}$ $\pm$ 1 --- $\delta$"
    assert latex_escape(r"\&") == r"\textbackslash{}\&"  # escaped once, not twice


def test_latex_table_with_special_characters_in_a_label_is_the_known_good_string(written):
    md, csv, tex = written
    assert [p.name for p in written] == ["table9.md", "table9.csv", "table9.tex"]
    assert tex.read_text() == KNOWN_GOOD_TEX


def test_the_three_formats_show_the_same_cells(written):
    md, csv, tex = written
    text = md.read_text()
    assert text.startswith("# Table 9: R² & co\n\n95 % intervals; — = none; δ ~ 1.\n\n|")
    assert text.endswith("\n## Runs used (2)\n")
    rows = markdown_rows(text)
    assert rows == [
        ["Model", "Layer", "Pref Psy", "Pref Avg", "m"],
        [NASTY, "3", "0.900 [0.800, 0.950] (n=2)", "—", "2"],
        ["plain", "12", "0.250", "0.500", "0.5"],
    ]
    # the CSV holds the numbers behind those cells: interval bounds and run counts in columns of their own
    data = pd.read_csv(csv)
    assert list(data.columns) == ["model", "layer", "pref_Psy", "pref_Psy_lo", "pref_Psy_hi", "pref_Psy_n"] + [
        "pref_Avg",
        "m",
    ]
    assert data.loc[0, "model"] == NASTY and data.loc[0, "pref_Psy_lo"] == 0.8 and data.loc[0, "pref_Psy_n"] == 2
    assert pd.isna(data.loc[0, "pref_Avg"]) and pd.isna(data.loc[1, "pref_Psy_hi"])  # missing, not 0


def test_detail_columns_go_to_the_csv_only(tmp_path):
    md, csv, tex = write_table(tmp_path, "t", frame(), title="T", caption="C", detail=[("", "m")])
    assert "m" in pd.read_csv(csv).columns
    assert markdown_rows(md.read_text())[0] == ["model", "layer", "pref Psy", "pref Avg"]
    assert "& m" not in tex.read_text()


def test_a_pipe_in_a_label_keeps_the_markdown_table_whole(tmp_path):
    table = pd.DataFrame({"name": ["a|b"], "value": [Cell(1.0)]})
    md, _, _ = write_table(tmp_path, "t", table, title="T", caption="C")
    assert r"| a\|b " in md.read_text()


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_table_compiles(written, tmp_path):
    document = tmp_path / "doc.tex"
    body = written[2].read_text()
    document.write_text(
        f"\\documentclass{{article}}\\usepackage{{booktabs}}\\begin{{document}}\n{body}\\end{{document}}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
