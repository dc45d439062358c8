"""Samples from datasets in other shapes, through 🤗 ``datasets``: a ``save_to_disk`` folder,
a JSONL / JSON / CSV / Parquet / Arrow file, or a Hub id (``org/name``), mapped field by
field into this project's records (``task_type``, ``prompt``, ``answer``, ``split``, ...).

A format says where the prompt and the answer are:

=================  ===============================  ==========================================
format             prompt                           answer
=================  ===============================  ==========================================
``dapo``           ``prompt``                       ``answer`` (this project's own records)
``gsm8k``          ``question``                     ``answer`` after its ``#### `` marker
``math``           ``problem``                      the last ``\\boxed{...}`` of ``solution``
``dapo-math-17k``  the user turn of ``prompt``      ``reward_model.ground_truth``
                   (chat messages)
``fields``         ``data.prompt_field``            ``data.answer_field``
=================  ===============================  ==========================================

Rows without a ``task_type`` are ``math`` (the verifier that compares final answers). Every
mapped row goes through ``records.validate_record``, so a bad row is one error naming the
dataset and the row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dapo_cli.config import DATA_FORMATS
from dapo_cli.errors import DapoError, first_line
from dapo_cli.records import validate_record
from dapo_cli.tasks.answers import last_boxed  # one reading of \boxed{}, the verifier's

FORMATS = DATA_FORMATS
_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet",
             ".arrow": "arrow"}  # fmt: skip


def load_dataset_samples(
    source: str | os.PathLike,
    *,
    split: str,
    fmt: str = "dapo",
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    hub_config: str | None = None,
    own_splits: bool = False,
) -> list[dict[str, Any]]:
    """The ``split`` of ``source`` (a ``save_to_disk`` folder, a data file, or a Hub id) as
    validated records, mapped by ``fmt`` (see the module docstring). From a dataset with
    splits (a folder or Hub id) the split named ``split`` is read, from one without (a single
    dataset, a file) every row, and the records are in ``split``. Only this project's records
    (``dapo``) may name another: those are left out, or with ``own_splits`` (``dapo db
    import``) kept with the split they name."""
    if fmt not in FORMATS:
        raise DapoError(f"data format {fmt!r} is not one of {', '.join(FORMATS)}")
    rows = _rows(str(source), split, hub_config)
    to_record = _mapper(fmt, prompt_field, answer_field)
    out = []
    for i, row in enumerate(rows):
        try:
            record = validate_record(to_record(row), default_split=split)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DapoError(f"{source} ({split} row {i}, format {fmt}): {reason}") from None
        if fmt != "dapo":
            record["split"] = split  # the dataset's split is the records'
        if own_splits or record["split"] == split:  # a dapo record may name another split
            out.append(record)
    if not out:
        raise DapoError(f"{source} has no rows in split {split!r}")
    return out


def _rows(source: str, split: str, hub_config: str | None):
    """The rows of one split: from disk when ``source`` exists, else from the Hub."""
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()  # its retries and warnings: the error says it all
    hub_logging.set_verbosity_error()
    path = Path(source)
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DapoError(f"{source} has no split {split!r} (it has {', '.join(loaded)})")
                return loaded[split]
            return loaded  # one Dataset: all its rows are the split asked for
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DapoError(
                    f"{source}: cannot read {path.suffix or 'a file without suffix'}"
                    f" (use {', '.join(_BUILDERS)} or a save_to_disk folder)"
                )
            return datasets.load_dataset(builder, data_files=str(path), split="train")
    except DapoError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; one line for all
        raise DapoError(f"{source}: not a readable dataset ({_short(exc)})") from None
    if path.suffix.lower() in _BUILDERS or source.startswith(("/", ".", "~")):
        raise DapoError(f"{source}: no such file or folder")
    try:
        return datasets.load_dataset(source, hub_config, split=split)
    except Exception as exc:  # noqa: BLE001
        named = f"{source} (configuration {hub_config})" if hub_config else source
        raise DapoError(
            f"{named}: not found as a file or folder, and the Hugging Face Hub could not "
            f"give it ({_short(exc)}); without a network, save it with "
            "datasets' save_to_disk where there is one and pass that folder"
        ) from None


def _mapper(fmt: str, prompt_field: str, answer_field: str) -> Callable[[Mapping], dict]:
    def with_type(row: Mapping, prompt: str, answer: str) -> dict[str, Any]:
        record = {"task_type": row.get("task_type") or "math", "prompt": prompt}
        record["answer"] = answer if isinstance(answer, str) else str(answer)
        return record | {k: row[k] for k in ("id", "difficulty", "verify") if row.get(k)}

    if fmt == "dapo":
        return dict
    if fmt == "gsm8k":
        return lambda row: with_type(row, row["question"], gsm8k_answer(row["answer"]))
    if fmt == "math":
        return lambda row: with_type(row, row["problem"], last_boxed(row["solution"]))
    if fmt == "dapo-math-17k":
        return lambda row: with_type(
            row, user_turn(row["prompt"]), row["reward_model"]["ground_truth"]
        )
    return lambda row: with_type(row, _text(row[prompt_field]), row[answer_field])


def _text(value: Any) -> str:
    """A prompt field: text, or chat messages (the user's turn)."""
    return user_turn(value) if isinstance(value, list) else value


def gsm8k_answer(solution: str) -> str:
    """GSM8K's final answer: what follows ``#### `` (thousands separators removed)."""
    if "####" not in solution:
        raise ValueError("the answer has no '####' line")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def user_turn(messages: Any) -> str:
    """The last user message of a chat (a list of {role, content})."""
    if not isinstance(messages, list):
        raise ValueError(f"expected chat messages, got {type(messages).__name__}")
    users = [m["content"] for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
        raise ValueError("the chat has no user message")
    return users[-1]


def _short(exc: BaseException) -> str:
    return first_line(exc)[:300]  # a library's message can be a whole dump
