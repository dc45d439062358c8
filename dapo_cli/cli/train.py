"""`dapo train` (DAPO) and `dapo sft` (the supervised warm start)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
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
    print_whole,
    user_errors,
)
from dapo_cli.config import SftSettings, load_config
from dapo_cli.observer import TrainObserver

app = typer.Typer()
SFT = SftSettings()

_STEP_FIELDS = (
    ("reward", "reward_mean", "{:+.2f}"),
    ("acc", "accuracy", "{:.2f}"),
    ("len", "response_length_mean", "{:.1f}"),
    ("filt", "groups_filtered", "{:.2f}"),
    ("gen", "gen_batches", "{:.0f}"),
    ("clip", "clip_frac_high", "{:.3f}"),
    ("kl", "approx_kl", "{:.4f}"),
    ("ent", "entropy", "{:.2f}"),
    ("s", "step_time", "{:.1f}"),
)


def format_step(metrics: dict[str, float]) -> str:
    """One line per step; ``partial 0.69`` when dynamic sampling filled only that share of
    the batch (train.on_gen_cap=continue); ``—`` for a statistic no token was measured for
    (clip and KL when every group was all right or all wrong, so no row was run)."""
    line = "  ".join(
        f"{label} {'—' if math.isnan(metrics[key]) else fmt.format(metrics[key])}"
        for label, key, fmt in _STEP_FIELDS
        if key in metrics
    )
    fill = metrics.get("batch_fill", 1.0)
    return line + (f"  partial {fill:.2f}" if fill < 1.0 else "")


class RichObserver(TrainObserver):
    """Progress bars for the warm start and the RL steps, one log line per step."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def _bar(self, name: str, total: int) -> int:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, info="")
        return self.tasks[name]

    def message(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}[/dim]", highlight=False, soft_wrap=True)

    def sft_step(self, step: int, total: int, loss: float) -> None:
        self.progress.update(
            self._bar("warm start", total), completed=step, info=f"loss {loss:.3f}"
        )

    def train_step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.progress.update(self._bar("dapo", total), completed=step)
        self.progress.console.print(
            f"step {step:>4}  {format_step(metrics)}", highlight=False, soft_wrap=True
        )


def progress_bars() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


TRAIN_EXAMPLE = (
    "Example: dapo train --data data/dataset.jsonl --steps 50 --group-size 8 "
    "--set algorithm.eps_high=0.28\n\n"
    "Several processes (FSDP): accelerate launch --config_file "
    "templates/accelerate/fsdp.yaml -m dapo_cli train --data data/dataset.jsonl\n\n"
    "LoRA: dapo train --model path/to/model --data data/dataset.jsonl --lora-r 16"
)


@app.command("train", epilog=TRAIN_EXAMPLE)
@user_errors
def train(  # long for its option declarations; the body maps them to settings
    config: Annotated[
        Path | None, typer.Option(help="YAML config (see templates/default.yaml).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="HF model id or local path; default: the embedded tiny model."),
    ] = None,
    data: Annotated[str | None, typer.Option(help=DATA_HELP + " Its train split is used.")] = None,
    data_format: DataFormatOption = None,
    data_config: DataConfigOption = None,
    system: SystemOption = None,
    prompt_template: PromptTemplateOption = None,
    data_split: Annotated[
        str | None, typer.Option(help="Which split of --data to train on (data.split; train).")
    ] = None,
    reward: Annotated[
        str | None,
        typer.Option(
            help="Your reward function, path/to/file.py:fn or module:fn (reward.function)."
        ),
    ] = None,
    db_path: Annotated[
        Path | None,
        typer.Option(
            help="SQLite store: metrics go here, and samples come from it without --data."
        ),
    ] = None,
    lora_r: Annotated[
        int | None, typer.Option(help="Train LoRA adapters of this rank instead of all weights.")
    ] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha (lora.alpha).")] = None,
    lora_targets: Annotated[
        str | None,
        typer.Option(help="Modules LoRA adapts: all-linear or names, e.g. q_proj,v_proj."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Rollout steps.")] = None,
    group_size: Annotated[int | None, typer.Option(help="Responses per prompt (G).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    dtype: DtypeOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Checkpoint folder.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any config field: section.key=value (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output-dir.")
    ] = False,
) -> None:
    """Fine-tune a model with DAPO: sample G responses per prompt, score them with the
    verifiers, keep groups with signal, and apply the clipped token-level update.

    With no arguments it trains the embedded tiny model (warm-started by a short supervised
    phase, cached) on freshly generated tasks, offline. Ctrl-C or SIGTERM finishes the step,
    saves a checkpoint and exits (130 / 143); `--resume` continues from it. A step that fails
    after training began saves the last good state first. When the model has learned the
    data (dynamic sampling finds no group with signal), the run stops early as converged.
    """
    overrides = list(set_ or [])
    flags = {
        "model.name": model, "data.path": data, "data.format": data_format,
        "data.hub_config": data_config, "data.split": data_split, "data.system_prompt": system,
        "data.prompt_template": prompt_template, "reward.function": reward,
        "lora.r": lora_r, "lora.alpha": lora_alpha, "lora.target_modules": lora_targets,
        "train.steps": steps, "model.dtype": dtype,
        "rollout.group_size": group_size, "train.lr": lr, "train.seed": seed,
        "output.output_dir": output_dir, "output.db_path": db_path,
    }  # fmt: skip
    if db_path is not None and data is None:
        flags["data.db_path"] = db_path
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
    run_train_command(config, overrides, resume)


def run_train_command(config: Path | None, overrides: list[str], resume: bool = False) -> None:
    """``dapo train``'s work and output (also the quickstart's stage 3)."""
    from dapo_cli.run import resume_command, run_training  # torch loads only when training

    cfg = load_config(config, overrides)
    quiet_transformers()
    with progress_bars() as progress:
        result = run_training(cfg, resume=resume, observer=RichObserver(progress))
    print_whole(_summary(result))
    console.print(f"checkpoint: {result.final_dir or '(the latest step checkpoint)'}")
    console.print(f"metrics:    {result.db_path} (run {result.run_id})")
    partial = sum(h.get("batch_fill", 1.0) < 1.0 for h in result.history)
    if partial:
        console.print(f"partial batches: {partial} of {len(result.history)} steps")
    if result.status == "converged":
        console.print(f"stopped early at step {result.steps}: {result.note}", soft_wrap=True)
    if result.status == "interrupted":
        command = resume_command(cfg.output.output_dir)
        console.print(f"interrupted at step {result.steps}; continue: {command}", soft_wrap=True)
        raise typer.Exit(128 + (result.signal or 2))  # 130 for Ctrl-C, 143 for SIGTERM


def _summary(result) -> Table:
    table = Table(title=f"DAPO {result.status} after {result.steps} steps")
    table.add_column("metric")
    table.add_column("first step", justify="right")
    table.add_column("last step", justify="right")
    if result.history:
        first, last = result.history[0], result.history[-1]
        for label, key, fmt in _STEP_FIELDS:
            if key in first:
                table.add_row(label, fmt.format(first[key]), fmt.format(last[key]))
    return table


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


SFT_EXAMPLE = "Example: dapo sft --data data/dataset.jsonl --steps 400 --output models/sft"


@app.command("sft", epilog=SFT_EXAMPLE)
@user_errors
def sft(
    data: Annotated[str, typer.Option(help=DATA_HELP + " Its train split is used.")],
    data_format: DataFormatOption = None,
    data_config: DataConfigOption = None,
    system: SystemOption = None,
    prompt_template: PromptTemplateOption = None,
    model: Annotated[
        str | None,
        typer.Option(help="HF model id or local path; default: the embedded tiny model."),
    ] = None,
    output: Annotated[Path, typer.Option(help="Where to save the model.")] = Path("models/sft"),
    steps: Annotated[int, typer.Option(help="Supervised steps.")] = SFT.steps,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = SFT.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = SFT.lr,
    seed: Annotated[int, typer.Option(help="Random seed.")] = SFT.seed,
    dtype: DtypeOption = None,
    db_path: Annotated[Path | None, typer.Option(help="SQLite store for the run's loss.")] = None,
) -> None:
    """Supervised fine-tuning on prompt → reference answer (loss on the answer tokens): the
    warm start that teaches a model the answer format before RL. Works on any causal LM."""
    settings = SftSettings(steps, batch_size, lr, seed, system, prompt_template, dtype or SFT.dtype)
    run_sft_command(data, model, output, settings, db_path, data_format, data_config)


def run_sft_command(
    data: str | Path,
    model: str | None,
    output: Path,
    settings: SftSettings,
    db_path: Path | None,
    data_format: str | None = None,
    data_config: str | None = None,
) -> None:
    """``dapo sft`` with a progress bar, its outcome in one line (the quickstart's stage 2)."""
    from dapo_cli.samples import load_samples
    from dapo_cli.sft import run_sft

    settings.check()
    samples, _ = load_samples(
        data, split="train", fmt=data_format or "dapo", hub_config=data_config
    )
    quiet_transformers()
    with progress_bars() as progress:
        bar = progress.add_task("sft", total=settings.steps, info="")
        summary = run_sft(
            samples, model, output, settings, db_path=db_path, data=str(data),
            on_step=lambda step, loss: progress.update(
                bar, completed=step, info=f"loss {loss:.3f}"
            ),
            on_message=lambda text: console.print(f"[dim]{text}", highlight=False),
        )  # fmt: skip
    done = (
        f"sft: loss {summary['loss_final']:.3f} after {int(summary['steps'])} steps "
        f"({summary['seconds']:.0f} s); saved to {output}"
    )
    console.print(done)
