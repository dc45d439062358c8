"""`dapo quickstart`: the whole story in one command, built from the other commands.

gen-data → db init/import → sft (warm start) → train (DAPO) → eval (warm start vs final) →
a closing summary. Each stage calls the same function as its own command, and prints that
command first, so a user can rerun any stage by hand.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.rule import Rule
from rich.table import Table

from dapo_cli.cli.common import console, print_whole, user_errors
from dapo_cli.errors import DapoError

app = typer.Typer()

EXAMPLE = "Example: dapo quickstart --workdir runs/first"

# The defaults are the measured quickstart in the README (2-core CPU, tiny-1m).
DEFAULT_TASK_TYPES = "puzzle"
DEFAULT_DIFFICULTY = "mixed"
DEFAULT_SAMPLES = 12000
DEFAULT_SFT_STEPS = 800
DEFAULT_SFT_BATCH = 64  # of the warm starts measured, the largest that fits the 10 minutes
DEFAULT_RL_STEPS = 200
DEFAULT_TRAIN_SETTINGS = (
    "rollout.max_new_tokens=64",
    "algorithm.overlong_cache_len=8",
    "train.train_batch_size=16",
    "train.gen_batch_size=32",
    "train.mini_batch_size=16",
    "train.lr=2e-4",
    "output.save_every=0",
)


def _stage(number: int, name: str, argv: list[str]) -> float:
    console.print(Rule(f"[bold]{number}/5 {name}", align="left"))
    console.print(f"[dim]$ {shlex.join(argv)}[/dim]", highlight=False, soft_wrap=True)
    return time.perf_counter()


@app.command("quickstart", epilog=EXAMPLE)
@user_errors
def quickstart(
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
    sft_steps: Annotated[int, typer.Option(help="Supervised warm-start steps.")] = (
        DEFAULT_SFT_STEPS
    ),
    sft_batch_size: Annotated[int, typer.Option(help="Samples per supervised step.")] = (
        DEFAULT_SFT_BATCH
    ),
    steps: Annotated[int, typer.Option(help="DAPO rollout steps.")] = DEFAULT_RL_STEPS,
    eval_prompts: Annotated[int, typer.Option(help="Held-out prompts evaluated.")] = 256,
    k: Annotated[int, typer.Option(help="Samples per prompt for avg@k / pass@k.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for data, training and evaluation.")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Extra `dapo train` config overrides, section.key=value."),
    ] = None,
) -> None:
    """Run the whole pipeline on the embedded tiny model, offline: generate data, store it,
    warm-start with supervised learning, train with DAPO, and evaluate the warm start against
    the final model on held-out prompts (avg@k at temperature 1.0, top-p 0.7).

    Every stage prints the `dapo` command that does the same thing on its own.
    """
    from dapo_cli.cli import data, db, train
    from dapo_cli.cli import eval as eval_cmd
    from dapo_cli.store import Store

    if min(num_samples, sft_steps, sft_batch_size, steps, eval_prompts, k) < 1:
        raise DapoError(
            "--num-samples, --sft-steps, --sft-batch-size, --steps, --eval-prompts and --k "
            "must be >= 1"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = workdir / "data" / "quickstart.jsonl"
    db_path = workdir / "data" / "dapo.db"
    warm = workdir / "models" / "quickstart-warm"
    out_dir = workdir / "models" / "checkpoints"
    final = out_dir / "dapo_final"
    results = workdir / "data" / "eval.json"
    overrides = [*DEFAULT_TRAIN_SETTINGS, *(set_ or [])]
    times: dict[str, float] = {}
    started = time.perf_counter()

    t = _stage(1, "data", ["dapo", "gen-data", "--num-samples", str(num_samples),
                           "--task-types", task_types, "--difficulty", difficulty,
                           "--seed", str(seed), "--output", str(dataset)])  # fmt: skip
    data.gen_data(num_samples=num_samples, output=dataset, task_types=task_types, seed=seed,
                  test_fraction=0.1, difficulty=difficulty)  # fmt: skip
    db_argv = f"dapo db init --db-path {db_path}; dapo db import {dataset} --db-path {db_path}"
    console.print(f"[dim]$ {db_argv}[/dim]", soft_wrap=True)
    db.init(db_path=db_path)
    db.import_(file=dataset, split=None, db_path=db_path)
    times["data"] = time.perf_counter() - t

    sft_argv = ["dapo", "sft", "--data", str(dataset), "--steps", str(sft_steps),
                "--batch-size", str(sft_batch_size), "--seed", str(seed), "--output", str(warm),
                "--db-path", str(db_path)]  # fmt: skip
    t = _stage(2, "warm start", sft_argv)
    train.sft(data=dataset, model=None, output=warm, steps=sft_steps, batch_size=sft_batch_size,
              lr=3e-3, seed=seed, db_path=db_path)  # fmt: skip
    times["warm start"] = time.perf_counter() - t

    argv = ["dapo", "train", "--model", str(warm), "--db-path", str(db_path), "--steps",
            str(steps), "--seed", str(seed), "--output-dir", str(out_dir)]  # fmt: skip
    t = _stage(3, "DAPO", argv + [a for o in overrides for a in ("--set", o)])
    train.train(config=None, model=str(warm), data=None, db_path=db_path, steps=steps,
                group_size=None, lr=None, seed=seed, output_dir=out_dir, set_=overrides,
                resume=False)  # fmt: skip
    times["DAPO"] = time.perf_counter() - t

    t = _stage(4, "evaluation", ["dapo", "eval", "--model", str(warm), "--model", str(final),
                                 "--db-path", str(db_path), "--k", str(k), "--limit",
                                 str(eval_prompts), "--output", str(results)])  # fmt: skip
    eval_cmd.eval_(model=[str(warm), str(final)], data=None, db_path=db_path, split="test", k=k,
                   temperature=1.0, top_p=0.7, greedy=False, max_new_tokens=64, task_types=None,
                   limit=eval_prompts, output=results, seed=seed, as_json=False)  # fmt: skip
    times["evaluation"] = time.perf_counter() - t
    total = time.perf_counter() - started

    console.print(Rule("[bold]5/5 summary", align="left"))
    with Store(db_path, create=False) as store:
        before, after = (_eval_metrics(store, run) for run in store.runs("eval")[-2:])
    print_whole(summary_table(before, after, k))
    console.print(
        "time: " + ", ".join(f"{name} {sec:.0f} s" for name, sec in times.items())
        + f"; total {total / 60:.1f} min"
    )  # fmt: skip
    console.print(f"final checkpoint: {final}", soft_wrap=True)
    console.print(f"warm start:       {warm}", soft_wrap=True)
    console.print(
        f"database:         {db_path} (dapo db stats --db-path {db_path})", soft_wrap=True
    )
    console.print(f"per-sample eval:  {results}", soft_wrap=True)
    console.print(f"try it:           dapo chat --model {final}", soft_wrap=True)


def _eval_metrics(store: Any, run: dict[str, Any]) -> dict[str, float]:
    return {m["name"]: m["value"] for m in store.metrics(run["id"])}


def summary_table(before: dict[str, float], after: dict[str, float], k: int) -> Table:
    """Held-out avg@k and pass@k per task type: warm start, DAPO, difference."""
    table = Table(title=f"held-out accuracy, warm start → DAPO (temperature 1.0, top-p 0.7, k={k})")
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
