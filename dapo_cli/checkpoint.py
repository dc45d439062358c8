"""Checkpoints: ``save_pretrained`` folders (loadable by plain transformers) plus the trainer
state needed to resume exactly (optimiser, scheduler, RNG, step, data position).

Writes are atomic: everything goes into a temporary sibling folder, which is renamed into
place only when complete, so a kill during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"
FINAL_NAME = "dapo_final"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"step_{step:06d}"


def save_checkpoint(
    path: str | os.PathLike,
    model,
    tokenizer,
    trainer_state: dict[str, Any] | None = None,
    *,
    weights: dict[str, Any] | None = None,
) -> Path:
    """Write model, tokenizer and (optionally) trainer state to ``path`` atomically.
    ``weights``: a state dict to write instead of the model's own (e.g. gathered shards)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=weights)
    tokenizer.save_pretrained(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / STATE_FILE)
    old = path.parent / f".old-{path.name}-{os.getpid()}"
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete step checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints, and leftovers of killed saves."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    remove_leftovers(root)
    if keep > 0:
        for _, path in list_checkpoints(root)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary folders of saves whose process is gone (killed mid-save).

    A folder whose writer is this process or is still alive (another run on the same
    folder) is left alone. Returns what was removed.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed = []
    for child in root.iterdir():
        if not (child.name.startswith((".tmp-", ".old-")) and child.is_dir()):
            continue
        pid = child.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but is not ours; else we cannot tell
        pass
    return True


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    # our own file, written by save_checkpoint; it holds optimiser tensors and RNG states
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
