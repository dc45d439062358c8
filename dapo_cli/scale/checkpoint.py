"""Checkpoints: ``save_pretrained`` folders (loadable by plain transformers) plus the trainer
state needed to resume exactly (optimiser, scheduler, RNG, step, data position).

Writes are atomic: everything goes into a temporary sibling folder, which is renamed into
place only when complete, so a kill during a save leaves the previous checkpoint intact; a
save that fails (a full disk) removes its partial folder and says, in one line, what is
still intact. Resuming takes the newest checkpoint whose files all read back
(:func:`resume_point`), passing over truncated or corrupt ones and saying so.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from dapo_cli.errors import DapoError

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
    try:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
    except (OSError, RuntimeError) as exc:  # disk full (ENOSPC), quota, I/O error
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(path.parent) or (path if path.exists() else None)
        intact = f"; {kept} is intact" if kept else "; no earlier checkpoint exists"
        reason = " ".join(str(exc).split())[:200]
        raise DapoError(f"could not save the checkpoint {path} ({reason}){intact}") from exc
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
    """The trainer state of checkpoint ``path``; a DapoError naming the file when it is
    missing, truncated or corrupt."""
    file = Path(path) / STATE_FILE
    try:
        # our own file, written by save_checkpoint; it holds optimiser tensors and RNG states
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (unpickling fails in many ways)
        raise DapoError(f"{file} is unreadable (truncated or corrupt: {exc})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise DapoError(f"{file} is not a dapo trainer state")
    return state


def weights_problem(path: str | os.PathLike) -> str | None:
    """Why the weights of checkpoint ``path`` cannot be read back (a missing, truncated or
    corrupt safetensors file), or None. Reads only the headers: safetensors checks that the
    file covers every tensor the header declares."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return f"{Path(path) / 'model.safetensors'} is missing"
    for file in files:
        try:
            with safe_open(file, "pt") as f:
                f.keys()
        except Exception as exc:  # noqa: BLE001
            return f"{file} is unreadable (truncated or corrupt: {exc})"
    return None


def resume_point(output_dir: str | os.PathLike) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest step checkpoint under ``output_dir`` that reads back whole: its path, its
    trainer state, and a line for each newer one passed over. None when there is none at all;
    a DapoError naming the problem when every one is broken."""
    found = list_checkpoints(output_dir)
    skipped: list[str] = []
    for _, path in reversed(found):
        try:
            problem = weights_problem(path)
            if problem is None:
                return path, load_trainer_state(path), skipped
        except DapoError as exc:
            problem = str(exc)
        skipped.append(problem)
    if skipped:
        raise DapoError(f"--resume: no checkpoint under {output_dir} reads back: {skipped[0]}")
    return None
