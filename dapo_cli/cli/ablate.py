"""`dapo ablate`: the DAPO paper's Table 1 ladder on your model and data (ablation.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.rule import Rule
from rich.table import Table

from dapo_cli.cli.common import (
    DATA_HELP,
    DataFormatOption,
    DtypeOption,
    console,
    parse_csv_option,
    print_whole,
    user_errors,
)
from dapo_cli.cli.train import RichObserver, progress_bars, quiet_transformers
from dapo_cli.config import AblationSettings, load_config
from dapo_cli.errors import DapoError

app = typer.Typer()
DEFAULTS = AblationSettings()

EXAMPLE = (
    "Example: dapo ablate --preset laptop --seeds 1 --steps 5 --workdir runs/ablate\n\n"
    "Your model and data: dapo ablate --model path/to/model --data data.jsonl "
    "--rungs grpo,dynamic-sampling --seeds 3 --budget samples"
)


@app.command("ablate", epilog=EXAMPLE)
@user_errors
def ablate(  # long for its option declarations; the body maps them to settings
    preset: Annotated[
        str | None,
        typer.Option(help="A bundled config: laptop (measured for this ablation) or quickstart."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML config of every run (instead of --preset).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="HF model id or local path; default: the embedded one.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help=DATA_HELP + " Trains on its train split, evaluates on --eval-split. Default: "
            "12000 generated samples of the config's data.task_types (seed 0)."
        ),
    ] = None,
    data_format: DataFormatOption = None,
    workdir: Annotated[
        Path, typer.Option(help="The experiment's folder: runs, data and (default) the store.")
    ] = Path("runs/ablate"),
    db_path: Annotated[
        Path | None, typer.Option(help="SQLite store [default: WORKDIR/dapo.db].")
    ] = None,
    rungs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated rungs (default all): grpo, overlong-filtering, clip-higher, "
            "soft-overlong, token-loss, dynamic-sampling; each includes the ones before it."
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per rung.")] = DEFAULTS.seeds,
    first_seed: Annotated[int, typer.Option(help="The first seed.")] = DEFAULTS.first_seed,
    steps: Annotated[
        int | None, typer.Option(help="Rollout steps per run [default: the config's].")
    ] = None,
    budget: Annotated[
        str,
        typer.Option(
            help="Equal budget per run: steps (the same rollout steps) or samples (the "
            "responses naive GRPO generates in --steps; dynamic sampling's extra count)."
        ),
    ] = DEFAULTS.budget,
    evals: Annotated[
        int, typer.Option(help="Held-out evaluations along each run (the last at its end).")
    ] = DEFAULTS.evals,
    eval_prompts: Annotated[
        int, typer.Option(help="Held-out prompts (0 = all).")
    ] = DEFAULTS.eval_prompts,
    eval_split: Annotated[str, typer.Option(help="Held-out split.")] = DEFAULTS.eval_split,
    k: Annotated[int, typer.Option(help="Samples per held-out prompt (avg@k, pass@k).")] = (
        DEFAULTS.k
    ),
    dtype: DtypeOption = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Config override of every run, section.key=value."),
    ] = None,
) -> None:
    """Run the DAPO paper's ablation ladder: naive GRPO, then overlong filtering, clip-higher,
    soft overlong punishment, token-level loss and dynamic sampling added one by one (the last
    rung is full DAPO), each over --seeds seeds from the same starting model at an equal
    budget, every run evaluated on the same held-out prompts; prints the table (mean ± std
    over seeds) beside the paper's.

    Every run and eval is filed under one experiment in the store. Rerun the same command to
    resume an interrupted ablation: finished runs are skipped, a cut run continues from its
    checkpoint. `dapo report` draws it.
    """
    from dapo_cli.ablation import check_inputs, parse_rungs, run_ablation

    if preset is not None and config is not None:
        raise DapoError("give --preset or --config, not both")
    settings = AblationSettings(
        parse_rungs(parse_csv_option(rungs) or []), seeds, first_seed, steps, budget, evals,
        eval_prompts, eval_split, k,
    ).check()  # fmt: skip
    overrides = list(set_ or [])
    overrides += [f"{key}={v}" for key, v in (("model.name", model), ("model.dtype", dtype),
                  ("data.format", data_format)) if v is not None]  # fmt: skip
    base = load_config(preset_path(preset) if preset else config, overrides)
    base.data.path = data or base.data.path
    check_inputs(base, settings)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAPO_HOME", str(workdir / "models"))  # the embedded model's cache
    db_path = db_path or workdir / "dapo.db"
    base.data.path = base.data.path or str(generated_data(workdir, base))
    base.output.db_path = str(db_path)

    quiet_transformers()
    with progress_bars() as progress:
        observer = StageObserver(progress)
        result = run_ablation(base, settings, workdir, db_path, observer)
    if result.status == "interrupted":
        console.print("interrupted; continue: rerun the same command", soft_wrap=True)
        raise typer.Exit(130)
    print_whole(ablation_table(result.rows))
    console.print(f"experiment {result.experiment_id} in {db_path}", soft_wrap=True)
    console.print(f"draw it:   dapo report --db-path {db_path}", soft_wrap=True)


def preset_path(name: str) -> Path:
    from dapo_cli.paths import templates_dir

    path = templates_dir() / f"{name}.yaml"
    if name in ("default",) or not path.is_file():
        raise DapoError(f"--preset: no preset {name!r} (bundled: laptop, quickstart)")
    return path


def generated_data(workdir: Path, base) -> Path:
    """No data given: generate the config's task types (default puzzle) once, seed 0, so
    every seed and rung trains on the same prompts and is judged on the same held-out ones."""
    from dapo_cli.cli.data import generate_file
    from dapo_cli.run import DEFAULT_DATA  # what dapo train generates without data

    path = workdir / "data" / "ablate.jsonl"
    if not path.is_file():
        types = base.data.task_types or DEFAULT_DATA["task_types"]
        n, difficulty = DEFAULT_DATA["num_samples"], DEFAULT_DATA["difficulty"]
        generate_file(n, path, types, 0, 0.1, difficulty)
    return path


class StageObserver(RichObserver):
    """The training runs' bars and step lines, with a rule where each run or eval starts."""

    def stage(self, text: str) -> None:
        for task in self.tasks.values():  # a fresh bar per run
            self.progress.remove_task(task)
        self.tasks.clear()
        self.progress.console.print(Rule(text, align="left"))


def ablation_table(rows: list[dict[str, Any]]) -> Table:
    """The ablation's table: held-out accuracy mean ± std over seeds per rung, with the
    budget each spent and the paper's AIME 2024 row beside it."""
    from dapo_cli.ablation import table_cells

    header, body = table_cells(rows)
    table = Table(title="ablation: final held-out accuracy")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for cells in body:
        table.add_row(*cells)
    return table
