"""The reports: the paper's tables and figures, and the preference-utility front, from finished runs.

Run them with ``python -m steer.report TARGET`` (``steer.report.__main__``). One idea per module,
imports going one way: ``__main__`` imports the reports, the reports import ``runs`` and ``tables``
(no import circle: pyproject.toml's import contracts, ``make lint``):

- ``runs``: finding finished runs under an outputs folder and reading what each is;
- ``tables``: the one table builder: a pandas DataFrame written as CSV, Markdown and LaTeX;
- ``r2``: Tables 2, 5 and 6, the R² of the validity-decay fits;
- ``table3``: Table 3, the judged results;
- ``figures``: Figures 2, 4 and 5, the preference and utility dynamics;
- ``front``: the preference–utility front.

Importing any of them loads no torch.
"""
