"""`dapo quickstart`: the whole story in one command, built from the other commands.

gen-data → db init/import → sft (warm start) → train (DAPO) → eval (warm start vs final) →
a closing summary. Each stage calls the same function as its own command, and prints that
command first, so a user can rerun any stage by hand.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.rule import Rule
from rich.table import Table

from dapo_cli.cli.common import console, parse_csv_option, print_whole, user_errors
from dapo_cli.config import EvalSettings
from dapo_cli.errors import DapoError

app = typer.Typer()
EVAL = EvalSettings()

EXAMPLE = "Example: dapo quickstart --workdir runs/first"

# The data; the training and warm-start settings are the preset templates/quickstart.yaml,
# measured on a 2-core CPU with tiny-1m (docs/experiments.md).
DEFAULT_TASK_TYPES = "puzzle"
DEFAULT_DIFFICULTY = "mixed"
DEFAULT_SAMPLES = 12000
DEFAULT_EVAL_PROMPTS = 256
PRESET = "quickstart.yaml"


def _stage(number: int, name: str, argv: list[str]) -> float:
    console.print(Rule(f"[bold]{number}/5 {name}", align="left"))
    console.print(f"[dim]$ {shlex.join(argv)}[/dim]", highlight=False, soft_wrap=True)
    return time.perf_counter()


@app.command("quickstart", epilog=EXAMPLE)
@user_errors
def quickstart(  # long for its options and five stages, each a few lines, top to bottom
    workdir: Annotated[
        Path, typer.Option(help="Folder for data/, models/ and the database (created).")
    ] = Path("."),
    task_types: Annotated[
        str, typer.Option(help="Comma-separated task types to generate and train on.")
    ] = DEFAULT_TASK_TYPES,
    difficulty: Annotated[str, typer.Option(help="easy, medium, hard or mixed.")] = (
        DEFAULT_DIFFICULTY
    ),
    num_samples: Annotated[int, typer.Option(help="Samples generated (train + test).")] = (
        DEFAULT_SAMPLES
    ),
    sft_steps: Annotated[
        int | None, typer.Option(help="Supervised warm-start steps [default: the preset's].")
    ] = None,
    sft_batch_size: Annotated[
        int | None, typer.Option(help="Samples per supervised step [default: the preset's].")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="DAPO rollout steps [default: the preset's].")
    ] = None,
    eval_prompts: Annotated[
        int, typer.Option(help="Held-out prompts evaluated.")
    ] = DEFAULT_EVAL_PROMPTS,
    k: Annotated[int, typer.Option(help="Samples per prompt for avg@k / pass@k.")] = EVAL.k,
    seed: Annotated[int, typer.Option(help="Seed for data, training and evaluation.")] = 0,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="Compute dtype of every stage: float32, bfloat16 or auto (model.dtype) "
            "[default: the preset's, float32]."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="`dapo train` config overrides over the preset, section.key=value."
        ),
    ] = None,
) -> None:
    """Run the whole pipeline on the embedded tiny model, offline: generate data, store it,
    warm-start with supervised learning, train with DAPO, and evaluate the warm start against
    the final model on held-out prompts (avg@k at temperature 1.0, top-p 0.7). The training
    and warm-start settings are the preset templates/quickstart.yaml.

    Every stage prints the `dapo` command that does the same thing on its own.
    """
    from dapo_cli.cli import data, db, train
    from dapo_cli.cli import eval as eval_cmd
    from dapo_cli.config import SftSettings, load_config
    from dapo_cli.paths import templates_dir

    preset = templates_dir() / PRESET
    cfg = load_config(preset, set_)  # the preset, as `dapo train` will read it
    sft_steps = sft_steps if sft_steps is not None else cfg.warm_start.steps
    sft_batch_size = sft_batch_size if sft_batch_size is not None else cfg.warm_start.batch_size
    steps = steps if steps is not None else cfg.train.steps
    if min(num_samples, sft_steps, sft_batch_size, steps, eval_prompts, k) < 1:
        raise DapoError(
            "--num-samples, --sft-steps, --sft-batch-size, --steps, --eval-prompts and --k "
            "must be >= 1"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    # the embedded base model is built (once) under the workdir too, unless $DAPO_HOME says
    os.environ.setdefault("DAPO_HOME", str(workdir / "models"))
    dataset, db_path = workdir / "data" / "quickstart.jsonl", workdir / "data" / "dapo.db"
    warm, out_dir = workdir / "models" / "quickstart-warm", workdir / "models" / "checkpoints"
    final, results = out_dir / "dapo_final", workdir / "data" / "eval.json"
    overrides = list(set_ or [])
    dtype = dtype or cfg.model.dtype  # the preset's (float32) unless --dtype or --set says
    dtype_argv = ["--dtype", dtype]  # every stage computes in the same dtype
    times: dict[str, float] = {}
    started = time.perf_counter()

    t = _stage(1, "data", ["dapo", "gen-data", "--num-samples", str(num_samples),
                           "--task-types", task_types, "--difficulty", difficulty,
                           "--seed", str(seed), "--output", str(dataset)])  # fmt: skip
    data.generate_file(num_samples, dataset, parse_csv_option(task_types), seed, 0.1, difficulty)
    db_argv = f"dapo db init --db-path {db_path}; dapo db import {dataset} --db-path {db_path}"
    console.print(f"[dim]$ {db_argv}[/dim]", soft_wrap=True)
    db.init_store(db_path)
    db.import_file(dataset, None, db_path)
    times["data"] = time.perf_counter() - t

    sft_argv = ["dapo", "sft", "--data", str(dataset), "--steps", str(sft_steps),
                "--batch-size", str(sft_batch_size), "--seed", str(seed), "--output", str(warm),
                "--db-path", str(db_path), *dtype_argv]  # fmt: skip
    t = _stage(2, "warm start", sft_argv)
    lr = cfg.warm_start.lr
    sft = SftSettings(sft_steps, sft_batch_size, lr, seed, dtype=dtype)
    train.run_sft_command(dataset, None, warm, sft, db_path)
    times["warm start"] = time.perf_counter() - t

    argv = ["dapo", "train", "--config", str(preset), "--model", str(warm), "--db-path",
            str(db_path), "--steps", str(steps), "--seed", str(seed), "--output-dir",
            str(out_dir)]  # fmt: skip
    t = _stage(3, "DAPO", argv + dtype_argv + [a for o in overrides for a in ("--set", o)])
    flags = {"model.name": warm, "data.db_path": db_path, "output.db_path": db_path,
             "train.steps": steps, "train.seed": seed, "output.output_dir": out_dir,
             "model.dtype": dtype}  # fmt: skip
    train.run_train_command(preset, [*overrides, *(f"{k}={v}" for k, v in flags.items())])
    times["DAPO"] = time.perf_counter() - t

    t = _stage(4, "evaluation", ["dapo", "eval", "--model", str(warm), "--model", str(final),
                                 "--db-path", str(db_path), "--k", str(k), "--limit",
                                 str(eval_prompts), "--output", str(results),
                                 *dtype_argv])  # fmt: skip
    evaluation = EvalSettings(k=k, seed=seed, limit=eval_prompts, dtype=dtype)
    eval_cmd.run_eval([str(warm), str(final)], None, db_path, evaluation, None, results)
    times["evaluation"] = time.perf_counter() - t
    total = time.perf_counter() - started

    _summary(db_path, evaluation, times, total)
    console.print(f"final checkpoint: {final}", soft_wrap=True)
    console.print(f"warm start:       {warm}", soft_wrap=True)
    console.print(
        f"database:         {db_path} (dapo db stats --db-path {db_path})", soft_wrap=True
    )
    console.print(f"per-sample eval:  {results}", soft_wrap=True)
    console.print(f"try it:           dapo chat --model {final}", soft_wrap=True)


def _summary(db_path: Path, evaluation, times: dict[str, float], total: float) -> None:
    """Stage 5: the last two eval runs (warm start, DAPO) side by side, and the times."""
    from dapo_cli.store import Store

    console.print(Rule("[bold]5/5 summary", align="left"))
    with Store(db_path, create=False) as store:
        before, after = (_eval_metrics(store, run) for run in store.runs("eval")[-2:])
    print_whole(summary_table(before, after, evaluation))
    console.print(
        "time: " + ", ".join(f"{name} {sec:.0f} s" for name, sec in times.items())
        + f"; total {total / 60:.1f} min"
    )  # fmt: skip


def _eval_metrics(store: Any, run: dict[str, Any]) -> dict[str, float]:
    return {m["name"]: m["value"] for m in store.metrics(run["id"])}


def summary_table(before: dict[str, float], after: dict[str, float], settings) -> Table:
    """Held-out avg@k and pass@k per task type: warm start, DAPO, difference."""
    k = settings.samples_per_prompt
    table = Table(
        title=f"held-out accuracy, warm start → DAPO (temperature {settings.temperature}, "
        f"top-p {settings.top_p}, k={k})"
    )
    table.add_column("task type")
    for col in (f"avg@{k} before", f"avg@{k} after", "Δ", f"pass@{k} before", f"pass@{k} after"):
        table.add_column(col, justify="right")
    types = sorted({name.split("/")[0] for name in before}, key=lambda t: (t == "all", t))
    for t in types:
        a0, a1 = before.get(f"{t}/avg@{k}"), after.get(f"{t}/avg@{k}")
        p0, p1 = before.get(f"{t}/pass@{k}"), after.get(f"{t}/pass@{k}")
        if a0 is None or a1 is None:
            continue
        table.add_row(
            f"[bold]{t}" if t == "all" else t,
            f"{a0:.1%}", f"{a1:.1%}", f"{(a1 - a0) * 100:+.1f} pts",
            f"{p0:.1%}" if p0 is not None else "", f"{p1:.1%}" if p1 is not None else "",
        )  # fmt: skip
    return table
