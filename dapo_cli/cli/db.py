"""`dapo db`: the SQLite database: create it, import and export samples, show what it holds.

Writers (`init`, `import`) create the database and apply missing migrations themselves;
readers (`export`, `stats`) never create one and say to run `dapo db init` when it is missing.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from dapo_cli.cli.common import (
    DATA_HELP,
    DataConfigOption,
    DataFormatOption,
    console,
    parse_csv_option,
    user_errors,
)
from dapo_cli.config import DataConfig
from dapo_cli.errors import DapoError
from dapo_cli.paths import resolve_db_path
from dapo_cli.records import file_format, write_records, write_rows
from dapo_cli.samples import records_to_import
from dapo_cli.store import Store

app = typer.Typer(
    help="The SQLite database: samples, training runs and their metrics, chat interactions.",
    epilog="Example: dapo db import data/dataset.jsonl; dapo db stats",
    no_args_is_help=True,
)

DbPath = Annotated[
    Path | None,
    typer.Option(help="Database file. Default: $DAPO_DB, else data/dapo.db.", show_default=False),
]
DATA = DataConfig()


def say(markup: str) -> None:
    """One message line; paths are never wrapped mid-way."""
    console.print(markup, soft_wrap=True)


class What(str, Enum):
    samples = "samples"
    interactions = "interactions"


@app.command("init", epilog="Example: dapo db init --db-path data/dapo.db")
@user_errors
def init(db_path: DbPath = None) -> None:
    """Create the database, or bring an older one up to date. Safe to run again.

    The database is in WAL mode, so a training run, an eval and a chat can write at once.
    """
    init_store(resolve_db_path(db_path))


def init_store(path: Path) -> None:
    """``dapo db init``'s work and output (also the quickstart's)."""
    with Store(path, migrate=False) as store:
        new = set(store.init())
        applied = store.migrations()
    verdict = f"applied {len(new)} migration(s)" if new else "already up to date"
    say(f"Database [bold]{escape(str(path))}[/] (WAL mode): {verdict}")
    table = Table("#", "migration", "applied at", "")
    for m in applied:
        table.add_row(
            str(m["number"]), m["name"], m["applied_at"], "new" if m["name"] in new else ""
        )
    console.print(table)


IMPORT_EXAMPLE = (
    "Example: dapo db import data/dataset.jsonl --split train\n\n"
    "A dataset: dapo db import openai/gsm8k --data-format gsm8k --data-config main --split test"
)


@app.command("import", epilog=IMPORT_EXAMPLE)
@user_errors
def import_(
    source: Annotated[str, typer.Argument(help=DATA_HELP, show_default=False)],
    split: Annotated[
        str | None,
        typer.Option(
            help="The split the records get (default: train). From a dataset with splits (a "
            "save_to_disk folder of several, a Hub id) it is also the split read, so import "
            "each one you want (--split test: its test split); from one without (a folder of "
            "one, a data file) every row gets it. Records in this project's format that name "
            "their own split keep it: a file written by gen-data holds both.",
            show_default=False,
        ),
    ] = None,
    data_format: DataFormatOption = None,
    data_config: DataConfigOption = None,
    prompt_field: Annotated[
        str | None,
        typer.Option(
            help=f"With --data-format fields: the prompt's field [default: {DATA.prompt_field}].",
            show_default=False,
        ),
    ] = None,
    answer_field: Annotated[
        str | None,
        typer.Option(
            help=f"With --data-format fields: the answer's field [default: {DATA.answer_field}].",
            show_default=False,
        ),
    ] = None,
    db_path: DbPath = None,
) -> None:
    """Validate every record of SOURCE, then add them all in one transaction.

    SOURCE is read as `dapo train --data` reads it, in --data-format (gsm8k, math,
    dapo-math-17k, or fields with --prompt-field and --answer-field; default: this project's
    records). All or nothing: one bad record stops the import before the database is
    touched, naming the file and line (or the dataset and row) and the problem. A sample
    whose id is already in the database, or repeated in SOURCE, is skipped and counted.
    Creates the database if needed.
    """
    fmt = data_format or DATA.format
    if (prompt_field or answer_field) and fmt != "fields":
        raise DapoError("--prompt-field and --answer-field need --data-format fields")
    fields = (prompt_field or DATA.prompt_field, answer_field or DATA.answer_field)
    import_file(source, split, resolve_db_path(db_path), fmt, fields, data_config)


def import_file(
    source: str | Path,
    split: str | None,
    path: Path,
    fmt: str = DATA.format,
    fields: tuple[str, str] = (DATA.prompt_field, DATA.answer_field),
    hub_config: str | None = None,
) -> None:
    """``dapo db import``'s work and output (also the quickstart's)."""
    records = records_to_import(
        source, split=split or DATA.split, fmt=fmt, fields=fields, hub_config=hub_config
    )  # validate before any write
    name = Path(source).name if Path(source).exists() else str(source)  # else a Hub id
    with Store(path) as store:
        inserted, skipped = store.import_samples(records, source=name)
    say(
        f"{escape(str(source))} -> {escape(str(store.path))}: [bold green]{inserted} inserted[/], "
        f"{skipped} skipped as duplicates"
    )
    kept = Counter(r["split"] for r in records if split and r["split"] != split)
    if kept:
        splits = ", ".join(f"{s}: {n}" for s, n in sorted(kept.items()))
        say(f"{sum(kept.values())} record(s) kept the split named in the file ({splits})")


@app.command(
    "export", epilog="Example: dapo db export data/test.parquet --split test --task-type math"
)
@user_errors
def export(
    file: Annotated[
        Path,
        typer.Argument(help="Output file: .jsonl, .csv or .parquet.", show_default=False),
    ],
    split: Annotated[
        str | None, typer.Option(help="Only this split (samples).", show_default=False)
    ] = None,
    task_type: Annotated[
        str | None,
        typer.Option(help="Only these task types, comma-separated (samples).", show_default=False),
    ] = None,
    what: Annotated[What, typer.Option(help="What to export.")] = What.samples,
    db_path: DbPath = None,
) -> None:
    """Write samples (or chat interactions) to a file, atomically.

    Samples come out in the shape `dapo db import` reads, so importing the file into a
    fresh database gives the same samples. Nothing to export is an error.
    """
    file_format(file)  # a bad extension fails before any work
    task_types = parse_csv_option(task_type)
    if what is What.interactions and (split or task_types):
        raise DapoError("--split and --task-type apply to samples, not interactions")
    with Store(resolve_db_path(db_path), create=False) as store:
        if what is What.samples:
            rows = store.samples(split, task_types)
        else:
            rows = store.export_interactions()
    if not rows:
        raise DapoError(f"{store.path}: no {what.value} to export (see `dapo db stats`)")
    if what is What.samples:
        write_records(file, rows)
    else:
        write_rows(file, rows, list(rows[0]), json_columns=("params",))
    say(f"{len(rows)} {what.value} written to {escape(str(file))}")


@app.command("stats", epilog="Example: dapo db stats --db-path data/dapo.db")
@user_errors
def stats(db_path: DbPath = None) -> None:
    """Show what the database holds: samples by split and task type, runs, metrics, chats."""
    with Store(resolve_db_path(db_path), create=False) as store:
        s = store.stats()
    say(f"Database [bold]{escape(s['path'])}[/] (schema version {s['schema_version']})")
    if s["samples"]:
        console.print(samples_table(s["samples"]))
    else:
        say("samples: none yet (add some with `dapo db import FILE`)")
    if s["runs"]:
        runs = Table("kind", "status", "runs", title="Runs")
        for row in s["runs"]:
            runs.add_row(row["kind"], row["status"], str(row["count"]))
        console.print(runs)
    else:
        say("runs: none yet")
    say(
        f"metrics: {s['metrics']} values logged; interactions: {s['interactions']}; "
        f"experiments: {s['experiments']} (dapo report draws them)"
    )


def samples_table(counts: list[dict[str, Any]]) -> Table:
    """Counts of samples: one row per task type, one column per split, with totals."""
    grid = {(c["task_type"], c["split"]): c["count"] for c in counts}
    first = {"train": 0, "test": 1}
    splits = sorted({s for _, s in grid}, key=lambda s: (first.get(s, 2), s))
    types = sorted({t for t, _ in grid})
    table = Table("task type", *splits, "total", title="Samples")
    for t in types:
        row = [grid.get((t, s), 0) for s in splits]
        table.add_row(t, *map(str, row), str(sum(row)))
    totals = [sum(grid.get((t, s), 0) for t in types) for s in splits]
    table.add_row("[bold]total", *map(str, totals), f"[bold]{sum(totals)}")
    return table
