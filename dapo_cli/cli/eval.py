"""`dapo eval`: avg@k / pass@k per task type, several models side by side."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dapo_cli.cli.common import console, err_console, parse_csv_option, print_whole, user_errors
from dapo_cli.errors import DapoError
from dapo_cli.records import atomic_file

app = typer.Typer()

EXAMPLE = (
    "Example: dapo eval --model models/embedded/tiny-1m-warm-... "
    "--model models/checkpoints/dapo_final --data data/dataset.jsonl --k 8"
)


def load_eval_samples(
    data: Path | None, db_path: Path | None, split: str, task_types: list[str] | None, limit: int
) -> list[dict[str, Any]]:
    """The ``split`` of a file or of the store, filtered by task type and limited."""
    from dapo_cli.records import read_records
    from dapo_cli.store import Store

    if data is not None:
        records = read_records(data)
        where = str(data)
        samples = [r for r in records if r["split"] == split]
    elif db_path is not None:
        samples = Store(db_path, create=False).samples(split=split)
        where = str(db_path)
    else:
        raise DapoError("give the samples: --data FILE or --db-path DB")
    if not samples:
        raise DapoError(f"{where} has no samples in split {split!r}")
    if task_types:
        samples = [s for s in samples if s["task_type"] in task_types]
        if not samples:
            raise DapoError(f"{where}: no {split} samples of task type(s) {', '.join(task_types)}")
    return samples[:limit] if limit else samples


def data_hash(samples: list[dict[str, Any]]) -> str:
    return hashlib.sha256("\n".join(s["id"] for s in samples).encode()).hexdigest()[:16]


@app.command("eval", epilog=EXAMPLE)
@user_errors
def eval_(
    model: Annotated[
        list[str],
        typer.Option(help="Model path or HF id (repeat to compare; 'tiny-1m' = embedded base)."),
    ],
    data: Annotated[Path | None, typer.Option(help="Samples file (.jsonl/.csv/.parquet).")] = None,
    db_path: Annotated[
        Path | None, typer.Option(help="SQLite store: samples (without --data) and results.")
    ] = None,
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    k: Annotated[int, typer.Option(help="Samples per prompt for avg@k and pass@k.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = 0.7,
    greedy: Annotated[bool, typer.Option("--greedy", help="One greedy answer per prompt.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Response length limit.")] = 64,
    task_types: Annotated[str | None, typer.Option(help="Comma-separated task types.")] = None,
    limit: Annotated[int, typer.Option(help="Evaluate at most this many prompts (0 = all).")] = 0,
    output: Annotated[
        Path | None, typer.Option(help="Write per-sample completions and scores as JSON.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed (the same for every model).")] = 0,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the summary as one JSON object on stdout, only that."),
    ] = False,
) -> None:
    """Evaluate models on held-out samples: avg@k (mean correctness over k samples per prompt)
    and pass@k (unbiased estimator) per task type, mean reward, length and truncation rate.

    Several --model are evaluated on exactly the same prompts with the same seed and shown
    side by side with the difference. Results are stored in the SQLite store as eval runs,
    each with a plain-text log beside the store (logs/eval-<run id>.log).
    """
    if k < 1:
        raise DapoError(f"--k must be at least 1, got {k}")
    if max_new_tokens < 1 or not 0 < top_p <= 1 or temperature <= 0:
        raise DapoError("--max-new-tokens must be >= 1, --top-p in (0, 1], --temperature > 0")
    samples = load_eval_samples(data, db_path, split, parse_csv_option(task_types), limit)
    from dapo_cli.rewards import require_sandbox_for

    isolation = require_sandbox_for({s["task_type"] for s in samples})
    if isolation is not None and not isolation.startswith("bubblewrap"):
        err_console.print(f"[yellow]WARNING: sandbox for code rewards: {isolation}")

    from dapo_cli.cli.train import quiet_transformers
    from dapo_cli.evaluate import generate_and_score, summarize
    from dapo_cli.paths import resolve_db_path
    from dapo_cli.policy import load_policy
    from dapo_cli.runlog import RunLog, log_path, metrics_text
    from dapo_cli.store import Store

    quiet_transformers()
    n = 1 if greedy else k
    settings = {"k": n, "temperature": temperature, "top_p": top_p, "greedy": greedy,
                "max_new_tokens": max_new_tokens, "seed": seed, "split": split,
                "data": str(data or db_path), "data_hash": data_hash(samples),
                "prompts": len(samples)}  # fmt: skip
    policies = [(name, load_policy(name)) for name in model]  # fail early on a bad path
    store = Store(resolve_db_path(db_path))
    results: list[dict[str, Any]] = []
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err_console if as_json else console, transient=True,
    ) as progress:  # fmt: skip
        for name, policy in policies:
            bar = progress.add_task(f"eval {Path(name).name}", total=len(samples))
            run_id = store.start_run("eval", settings, name)
            log = RunLog()
            log.open(log_path(store.path, "eval", run_id))
            log.line(f"eval of {name}: {json.dumps(settings)}")
            try:
                rows = generate_and_score(
                    policy, samples, k=n, temperature=temperature, top_p=top_p,
                    greedy=greedy, max_new_tokens=max_new_tokens, seed=seed,
                    on_progress=lambda m, bar=bar: progress.advance(bar, m),
                )  # fmt: skip
            except BaseException as exc:
                store.finish_run(run_id, "failed")
                log.line(f"failed: {type(exc).__name__}: {exc}")
                raise
            summary = summarize(rows, n)
            store.log_metrics(
                run_id, 0,
                {f"{t}/{m}": v for t, ms in summary.items() for m, v in ms.items()},
            )  # fmt: skip
            store.finish_run(run_id, "completed")
            for task_type, metrics in summary.items():
                log.line(f"{task_type} {metrics_text(metrics)}")
            log.close()
            results.append({"model": name, "run_id": run_id, "summary": summary, "samples": rows})
    if output is not None:
        _write_json(output, {"settings": settings, "models": results})
    if as_json:
        brief = [{k: v for k, v in r.items() if k != "samples"} for r in results]
        typer.echo(json.dumps({"settings": settings, "models": brief}, ensure_ascii=False))
        return
    print_whole(comparison_table(results, n, split, len(samples)))
    if output is not None:
        console.print(f"per-sample results: {output}")


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
