"""`dapo gen-data`: synthetic, verifiable task data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dapo_cli.cli.common import console, parse_csv_option, user_errors
from dapo_cli.datagen import generate_dataset
from dapo_cli.records import file_format, write_records
from dapo_cli.tasks import BUILTIN_TASK_TYPES

app = typer.Typer()

EXAMPLE = (
    "Example: dapo gen-data --num-samples 200 --output data/dataset.jsonl "
    "--task-types math,reasoning --difficulty easy --seed 0"
)


@app.command("gen-data", epilog=EXAMPLE)
@user_errors
def gen_data(
    num_samples: Annotated[int, typer.Option(help="How many samples in all (train + test).")] = 200,
    output: Annotated[
        Path,
        typer.Option(help="Output file; .jsonl, .csv or .parquet by extension."),
    ] = Path("data/dataset.jsonl"),
    task_types: Annotated[
        str,
        typer.Option(help="Comma-separated task types; counts are balanced between them."),
    ] = ",".join(BUILTIN_TASK_TYPES),
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same file.")] = 0,
    test_fraction: Annotated[
        float, typer.Option(help="Share of each task type that goes to the test split.")
    ] = 0.1,
    difficulty: Annotated[
        str, typer.Option(help="easy, medium, hard, or mixed (the three in turn).")
    ] = "mixed",
) -> None:
    """Generate synthetic tasks whose answers a program can check.

    Writes ONE file holding both splits: every record has a `split` field (train or test).
    No problem appears twice, so no prompt is shared between the splits.
    """
    generate_file(
        num_samples, output, parse_csv_option(task_types), seed, test_fraction, difficulty
    )


def generate_file(
    num_samples: int, output: Path, task_types: list[str], seed: int, test_fraction: float,
    difficulty: str,
) -> None:  # fmt: skip
    """``dapo gen-data``'s work and output (also the quickstart's first stage)."""
    file_format(output)  # fail on a bad extension before any work
    with Progress(
        TextColumn("[bold]generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("gen", total=num_samples)
        records = generate_dataset(
            num_samples,
            task_types,
            seed=seed,
            test_fraction=test_fraction,
            difficulty=difficulty,
            on_progress=lambda n: progress.advance(bar, n),
        )
    write_records(output, records)
    console.print(summary_table(records, title=f"{len(records)} samples written to {output}"))


def summary_table(records: list[dict], title: str) -> Table:
    """Counts by task type: train, test and difficulty."""
    by_split = Counter((r["task_type"], r["split"]) for r in records)
    by_level = Counter((r["task_type"], r["difficulty"]) for r in records)
    types = list(dict.fromkeys(r["task_type"] for r in records))
    table = Table(title=title)
    for col in ("task type", "train", "test", "easy", "medium", "hard"):
        table.add_column(col, justify="left" if col == "task type" else "right")
    for t in types:
        table.add_row(
            t,
            *(str(by_split[(t, s)]) for s in ("train", "test")),
            *(str(by_level[(t, d)]) for d in ("easy", "medium", "hard")),
        )
    table.add_row(
        "[bold]total",
        *(str(sum(by_split[(t, s)] for t in types)) for s in ("train", "test")),
        *(str(sum(by_level[(t, d)] for t in types)) for d in ("easy", "medium", "hard")),
    )
    return table
