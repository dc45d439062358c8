"""Where samples come from: a samples file or the SQLite store, one split, optionally some
task types. Training, SFT and eval all load through ``load_samples``; ``dapo db import``
reads the same sources through ``records_to_import``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dapo_cli.errors import DapoError
from dapo_cli.hub_data import load_dataset_samples
from dapo_cli.records import FORMATS as RECORD_FORMATS
from dapo_cli.records import read_records
from dapo_cli.store import Store


def load_samples(
    path: str | os.PathLike | None = None,
    db_path: str | os.PathLike | None = None,
    *,
    split: str,
    task_types: list[str] | None = None,
    limit: int = 0,
    fmt: str = "dapo",
    fields: tuple[str, str] = ("prompt", "answer"),
    hub_config: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """The ``split`` of ``path``, else of the store at ``db_path`` (a path given explicitly
    wins: the store may be only where results go), filtered by task type and cut to the
    first ``limit`` (0: all). ``path`` is this project's JSONL/CSV/Parquet file (errors name
    ``file:line``), or anything ``hub_data`` reads: a ``save_to_disk`` folder, another data
    file, a Hub id, in the format ``fmt`` (``fields``: the prompt and answer fields of the
    ``fields`` format). Returns (samples, where they came from); none left is one error."""
    if path is not None:
        if _records_file(path, fmt):
            samples = [r for r in read_records(path) if r["split"] == split]
        else:
            samples = load_dataset_samples(
                path, split=split, fmt=fmt, prompt_field=fields[0], answer_field=fields[1],
                hub_config=hub_config,
            )  # fmt: skip
        where = str(path)
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
    return (samples[:limit] if limit else samples), f"{where} (split {split})"


def records_to_import(
    source: str | os.PathLike,
    *,
    split: str,
    fmt: str = "dapo",
    fields: tuple[str, str] = ("prompt", "answer"),
    hub_config: str | None = None,
) -> list[dict[str, Any]]:
    """Every record ``dapo db import`` adds from ``source``, all validated before the store
    is touched. This project's JSONL/CSV/Parquet file is read whole (errors name
    ``file:line``; records without a split get ``split``, the others keep theirs); anything
    else is read as ``load_samples`` reads it, the ``split`` of the dataset, its rows given
    that split (this project's records there keep the split they name)."""
    if _records_file(source, fmt):
        return read_records(source, default_split=split)
    return load_dataset_samples(
        source, split=split, fmt=fmt, prompt_field=fields[0], answer_field=fields[1],
        hub_config=hub_config, own_splits=True,
    )  # fmt: skip


def _records_file(path: str | os.PathLike, fmt: str) -> bool:
    """This project's own samples file, read by ``records`` (errors name ``file:line``)."""
    return fmt == "dapo" and Path(path).suffix.lower() in RECORD_FORMATS
