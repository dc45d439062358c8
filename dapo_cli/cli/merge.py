"""`dapo merge`: a LoRA adapter folded into its base model, saved as an ordinary model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dapo_cli.cli.common import console, user_errors

app = typer.Typer()

EXAMPLE = "Example: dapo merge models/checkpoints/dapo_final --output models/merged"


@app.command("merge", epilog=EXAMPLE)
@user_errors
def merge(
    adapter: Annotated[
        Path,
        typer.Argument(
            help="A LoRA checkpoint (folder with adapter_config.json).", show_default=False
        ),
    ],
    output: Annotated[Path, typer.Option(help="Folder for the merged model.")],
    dtype: Annotated[
        str,
        typer.Option(
            help="The merged weights' dtype: float32 (no rounding), bfloat16 (half the size), "
            "or auto (the compute dtype, as --dtype elsewhere)."
        ),
    ] = "float32",
) -> None:
    """Merge a LoRA adapter (a `dapo train --lora-r` checkpoint) into the base model it
    names and save the result as an ordinary Hugging Face model folder, which loads without
    peft anywhere (transformers, vLLM, llama.cpp's converter)."""
    from dapo_cli.cli.train import quiet_transformers
    from dapo_cli.lora import base_of, merge

    quiet_transformers()
    saved = merge(adapter, output, dtype)
    console.print(
        f"merged {adapter} into its base ({base_of(adapter)}); saved to {saved}", soft_wrap=True
    )
