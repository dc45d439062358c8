"""What every command shares: the consoles, the global --debug state, and turning errors a
user can cause into one clear line and a non-zero exit."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from dapo_cli.config import DTYPE_HELP
from dapo_cli.errors import DapoError

# Under a multi-process launcher (accelerate launch, torchrun) only rank 0 prints.
console = Console(quiet=os.environ.get("RANK", "0") != "0")
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

# Options that train, sft, eval and db import share (the same words in every --help)
DATA_HELP = (
    "Samples: a .jsonl/.csv/.parquet file, a datasets save_to_disk folder, or a Hub id (org/name)."
)
FORMAT_HELP = (
    "Where prompt and answer are in the data's rows: dapo (this project's records), gsm8k, "
    "math, dapo-math-17k [default: dapo]."
)
DataFormatOption = Annotated[str | None, typer.Option(help=FORMAT_HELP)]
DataConfigOption = Annotated[
    str | None, typer.Option(help="The Hub dataset's configuration (data.hub_config), e.g. main.")
]
SystemOption = Annotated[
    str | None,
    typer.Option(help="System prompt before every prompt, through the chat template."),
]
DtypeOption = Annotated[str | None, typer.Option(help=DTYPE_HELP + " [default: auto]")]
PromptTemplateOption = Annotated[
    str | None,
    typer.Option(
        help="Wrap every prompt in this text, at its {prompt} (once), before the chat template; "
        "other braces stay as written, e.g. '{prompt} Put your final answer within \\boxed{}.' "
        "(data.prompt_template).",
        show_default=False,
    ),
]


class _State:
    debug: bool = False


state = _State()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``Error: message`` on stderr (one line, no markup) and return the Exit to raise."""
    err_console.print(Text("Error: ", style="bold red") + Text(message), soft_wrap=True)
    return typer.Exit(code)


def user_errors(fn: F) -> F:
    """Wrap a command: a DapoError becomes one line on stderr and exit 1; anything unexpected
    becomes one line naming the exception (exit 1); --debug shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except DapoError as exc:
            if state.debug:
                raise
            raise fail(str(exc)) from None
        except Exception as exc:
            if state.debug:
                raise
            msg = f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            raise fail(msg) from None

    return wrapper  # type: ignore[return-value]


def print_whole(renderable: Any) -> None:
    """Print a table on stdout; when stdout is not a terminal (a pipe, a log file, CI), at
    the width it needs, so no figure is cut to an ellipsis to fit 80 columns."""
    if console.is_terminal or console.quiet:
        console.print(renderable)
        return
    wide = Console(width=100_000, no_color=True)
    width = wide.measure(renderable).maximum
    Console(file=sys.stdout, width=max(width, 20), no_color=True).print(renderable)


def parse_csv_option(value: str | None) -> list[str] | None:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; None stays None."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def is_interactive() -> bool:
    return sys.stdout.isatty()
