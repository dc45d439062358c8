"""`dapo eval`: avg@k / pass@k per task type, several models side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dapo_cli.cli.common import (
    DATA_HELP,
    DataConfigOption,
    DataFormatOption,
    DtypeOption,
    PromptTemplateOption,
    SystemOption,
    console,
    err_console,
    parse_csv_option,
    print_whole,
    user_errors,
)
from dapo_cli.config import EvalSettings
from dapo_cli.records import atomic_file
from dapo_cli.samples import load_samples
from dapo_cli.tasks.base import Scoring

app = typer.Typer()
DEFAULTS = EvalSettings()

EXAMPLE = (
    "Example: dapo eval --model models/embedded/tiny-1m-warm-... "
    "--model models/checkpoints/dapo_final --data data/dataset.jsonl --k 8"
)


@app.command("eval", epilog=EXAMPLE)
@user_errors
def eval_(  # long for its option declarations; the body maps them to settings
    model: Annotated[
        list[str],
        typer.Option(help="Model path or HF id (repeat to compare; 'tiny-1m' = embedded base)."),
    ],
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    data_format: DataFormatOption = None,
    data_config: DataConfigOption = None,
    system: SystemOption = None,
    prompt_template: PromptTemplateOption = None,
    db_path: Annotated[
        Path | None, typer.Option(help="SQLite store: samples (without --data) and results.")
    ] = None,
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = DEFAULTS.split,
    k: Annotated[int, typer.Option(help="Samples per prompt for avg@k and pass@k.")] = DEFAULTS.k,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature.")
    ] = DEFAULTS.temperature,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = DEFAULTS.top_p,
    greedy: Annotated[
        bool, typer.Option("--greedy", help="One greedy answer per prompt.")
    ] = DEFAULTS.greedy,
    max_new_tokens: Annotated[
        int, typer.Option(help="Response length limit.")
    ] = DEFAULTS.max_new_tokens,
    task_types: Annotated[str | None, typer.Option(help="Comma-separated task types.")] = None,
    limit: Annotated[
        int, typer.Option(help="Evaluate at most this many prompts (0 = all).")
    ] = DEFAULTS.limit,
    output: Annotated[
        Path | None, typer.Option(help="Write per-sample completions and scores as JSON.")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Sampling seed (the same for every model).")
    ] = DEFAULTS.seed,
    dtype: DtypeOption = None,
    last_number: Annotated[
        bool,
        typer.Option(
            "--last-number",
            help="Math: an answer without Answer: or \\boxed{} is its last number "
            "(reward.last_number).",
        ),
    ] = DEFAULTS.scoring.last_number,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the summary as one JSON object on stdout, only that."),
    ] = False,
) -> None:
    """Evaluate models on held-out samples: avg@k (mean correctness over k samples per prompt)
    and pass@k (unbiased estimator) per task type, mean reward, length and truncation rate.

    Several --model are evaluated on exactly the same prompts with the same seed and shown
    side by side with the difference. Results are stored in the SQLite store as eval runs,
    each with a plain-text log beside the store (logs/eval-RUN_ID.log).
    """
    settings = EvalSettings(
        split, k, temperature, top_p, greedy, max_new_tokens, seed, limit, system,
        prompt_template, Scoring(last_number=last_number), dtype or DEFAULTS.dtype,
    )  # fmt: skip
    run_eval(
        model, data, db_path, settings, parse_csv_option(task_types), output, as_json,
        data_format, data_config,
    )  # fmt: skip


def run_eval(
    models: list[str],
    data: str | Path | None,
    db_path: Path | None,
    settings: EvalSettings,
    task_types: list[str] | None = None,
    output: Path | None = None,
    as_json: bool = False,
    data_format: str | None = None,
    data_config: str | None = None,
) -> list[dict[str, Any]]:
    """``dapo eval``'s work and output (also the quickstart's stage 4): load the samples,
    evaluate every model with a progress bar (on stderr with --json), write the per-sample
    JSON, print the comparison table (the summary as JSON with ``as_json``); returns the
    results."""
    settings.check()
    samples, _ = load_samples(
        data, db_path, split=settings.split, task_types=task_types, limit=settings.limit,
        fmt=data_format or "dapo", hub_config=data_config,
    )  # fmt: skip
    from dapo_cli.rewards import require_sandbox_for

    isolation = require_sandbox_for({s["task_type"] for s in samples})
    if isolation is not None and not isolation.startswith("bubblewrap"):
        err_console.print(f"[yellow]WARNING: sandbox for code rewards: {isolation}")

    from dapo_cli.cli.train import quiet_transformers
    from dapo_cli.evaluate import evaluate_models

    quiet_transformers()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console if as_json else console, transient=True,
    ) as progress:  # fmt: skip

        def on_model(name: str):
            bar = progress.add_task(f"eval {Path(name).name}", total=len(samples))
            return lambda m: progress.advance(bar, m)

        recorded, results = evaluate_models(
            models, samples, settings, db_path=db_path, data=str(data or db_path),
            on_model=on_model,
        )  # fmt: skip
    if output is not None:
        _write_json(output, {"settings": recorded, "models": results})
    if as_json:
        brief = [{k: v for k, v in r.items() if k != "samples"} for r in results]
        typer.echo(json.dumps({"settings": recorded, "models": brief}, ensure_ascii=False))
        return results
    n, prompts = settings.samples_per_prompt, prompts_of(results)
    print_whole(comparison_table(results, n, settings.split, prompts))
    if output is not None:
        console.print(f"per-sample results: {output}")
    return results


def prompts_of(results: list[dict[str, Any]]) -> int:
    """How many prompts were evaluated."""
    return int(results[0]["summary"]["all"]["prompts"])


def comparison_table(results: list[dict[str, Any]], n: int, split: str, prompts: int) -> Table:
    """Task types as rows; avg@n, pass@n, mean length and truncation rate per model (numbered,
    named in the caption so the columns stay narrow); Δ avg@n of the last model over the first."""
    legend = "   ".join(f"[{i}] {entry['model']}" for i, entry in enumerate(results, start=1))
    table = Table(
        title=f"{prompts} {split} prompts, {n} sample(s) each", caption=legend,
        box=box.SIMPLE_HEAVY, pad_edge=False, collapse_padding=True,
    )  # fmt: skip
    table.add_column("task type")
    for i, _ in enumerate(results, start=1):
        table.add_column(f"[{i}]\navg@{n}", justify="right")
        if n > 1:
            table.add_column(f"[{i}]\npass@{n}", justify="right")
        table.add_column(f"[{i}]\nlen", justify="right")
        table.add_column(f"[{i}]\ntrunc", justify="right")
    if len(results) > 1:
        table.add_column(f"Δ avg@{n}\n[{len(results)}]−[1]", justify="right", min_width=7)
    for t in results[0]["summary"]:
        cells = []
        for entry in results:
            s = entry["summary"][t]
            cells.append(f"{s[f'avg@{n}']:.3f}")
            if n > 1:
                cells.append(f"{s[f'pass@{n}']:.3f}")
            cells += [f"{s['length_mean']:.1f}", f"{s['truncation_rate']:.2f}"]
        if len(results) > 1:
            first = results[0]["summary"][t][f"avg@{n}"]
            last = results[-1]["summary"][t][f"avg@{n}"]
            cells.append(f"{last - first:+.3f}")
        table.add_row(f"[bold]{t}" if t == "all" else t, *cells)
    return table


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps(payload, indent=1, ensure_ascii=False).encode("utf-8"))
