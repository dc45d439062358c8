"""The `dapo` command: the command groups composed into one Typer app."""

from __future__ import annotations

from typing import Annotated

import typer

from dapo_cli import __version__
from dapo_cli.cli import ablate, chat, data, db, merge, quickstart, report, train
from dapo_cli.cli import eval as eval_cmd
from dapo_cli.cli.common import state

app = typer.Typer(
    name="dapo",
    help="Fine-tune language models with DAPO: reinforcement learning with verifiable rewards.",
    epilog="Example: dapo gen-data --num-samples 200 --output data/dataset.jsonl",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dapo {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="DAPO_DEBUG", help="Show tracebacks on errors.")
    ] = False,
) -> None:
    """Fine-tune language models with DAPO: reinforcement learning with verifiable rewards."""
    state.debug = debug


app.add_typer(data.app)
app.add_typer(train.app)
app.add_typer(eval_cmd.app)
app.add_typer(chat.app)
app.add_typer(merge.app)
app.add_typer(quickstart.app)
app.add_typer(ablate.app)
app.add_typer(report.app)
app.add_typer(db.app, name="db")


def main() -> None:
    app()
