"""`dapo report`: the store drawn as one self-contained HTML page (report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dapo_cli.cli.common import console, user_errors

app = typer.Typer()

EXAMPLE = "Example: dapo report --db-path runs/ablate/dapo.db --output report.html --png plots/"


@app.command("report", epilog=EXAMPLE)
@user_errors
def report(
    db_path: Annotated[
        Path | None, typer.Option(help="SQLite store [default: $DAPO_DB or data/dapo.db].")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="The HTML file [default: report.html beside the store].")
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Also write every plot as a PNG into this folder.")
    ] = None,
    experiment: Annotated[
        list[str] | None,
        typer.Option(help="Only this experiment (id or unique prefix; repeatable)."),
    ] = None,
    run: Annotated[
        list[str] | None, typer.Option(help="Only this run (id or unique prefix; repeatable).")
    ] = None,
) -> None:
    """Draw the store as one HTML page that needs nothing else to open (plots embedded):
    for an ablation, its table beside the paper's Table 1, held-out accuracy per rung and the
    training curves of all rungs overlaid (mean over seeds with a band); for a training run,
    reward, accuracy, entropy, response length, truncation, clip fractions, filtered groups
    and generation batches per step; the evaluations as a table.
    """
    from dapo_cli.paths import resolve_db_path
    from dapo_cli.report import build_report, write_report
    from dapo_cli.store import Store

    path = resolve_db_path(db_path)
    with Store(path, create=False) as store:
        sections = build_report(store, experiment, run)
    output = output or path.parent / "report.html"
    count = write_report(sections, output, f"dapo report: {path}", png)
    console.print(
        f"report: {output} ({_count(len(sections), 'section')}, {_count(count, 'plot')})",
        soft_wrap=True,
    )
    if png is not None:
        console.print(f"plots:  {png}/", soft_wrap=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
