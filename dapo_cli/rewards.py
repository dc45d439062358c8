"""Scoring completions: ``score(sample, completion)`` dispatches to the verifier registered
for ``sample["task_type"]``. Built-in task types register their own verifiers; add yours
with :func:`register_verifier`.

Verifiers are rule-based (DAPO Eq. 7): +1 for a correct answer, -1 otherwise (graded
tasks such as creative writing may return values in between). Exact match of the
extracted answer, never substring. The length-based shaping (soft overlong punishment)
is added by the trainer, not here, because it depends on token counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dapo_cli import sandbox
from dapo_cli.sandbox import SandboxUnavailable
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.base import Score, extract_answer, normalize_answer

Verifier = Callable[[Mapping[str, Any], str], Score]

_VERIFIERS: dict[str, Verifier] = {}


def register_verifier(task_type: str, verifier: Verifier) -> Verifier:
    """Register ``verifier(sample, completion) -> Score`` for ``task_type``.

    Registered verifiers take precedence over built-in tasks of the same name. Returns the
    verifier, so it can be used as a decorator factory target.
    """
    if not task_type:
        raise ValueError("task_type must be a non-empty string")
    _VERIFIERS[task_type] = verifier
    return verifier


def known_task_types() -> set[str]:
    """Every task type that can be scored: built-in tasks and registered verifiers."""
    return set(TASKS) | set(_VERIFIERS)


def get_verifier(task_type: str) -> Verifier:
    if task_type in _VERIFIERS:
        return _VERIFIERS[task_type]
    if task_type in TASKS:
        return TASKS[task_type].verify
    known = ", ".join(sorted(known_task_types()))
    raise KeyError(f"no verifier for task type {task_type!r} (known: {known})")


def require_sandbox_for(task_types) -> str | None:
    """Before any work: when one of ``task_types`` runs model-written code, check that the
    sandbox can run it here (:class:`SandboxUnavailable` otherwise) and return its one-line
    description; None when no code runs."""
    if any(getattr(TASKS.get(t), "runs_code", False) for t in task_types):
        return sandbox.require()
    return None


def score(sample: Mapping[str, Any], completion: str) -> Score:
    """Score one completion for one sample. Never raises on model output: a verifier that
    fails on a malformed completion scores it incorrect, with the error in ``details``."""
    verifier = get_verifier(sample["task_type"])
    try:
        return verifier(sample, completion)
    except SandboxUnavailable:  # the machine, not the completion: every code answer would fail
        raise
    except Exception as exc:  # a broken completion must never stop a training run
        return Score.binary(False, error=f"{type(exc).__name__}: {exc}")


def score_batch(
    samples: Sequence[Mapping[str, Any]], completions: Sequence[str], repeat: int = 1
) -> list[Score]:
    """Scores of ``completions``, where completion i answers ``samples[i // repeat]`` (the
    ``repeat`` responses to each prompt of a rollout). Several at once: code verifiers wait
    on their sandbox processes."""
    owners = [samples[i // repeat] for i in range(len(completions))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(score, owners, completions))


__all__ = [
    "Score",
    "Verifier",
    "extract_answer",
    "get_verifier",
    "known_task_types",
    "normalize_answer",
    "register_verifier",
    "score",
    "score_batch",
    "require_sandbox_for",
    "score",
]
