"""Scoring completions: ``score(sample, completion)`` dispatches to the verifier registered
for ``sample["task_type"]``. Built-in task types register their own verifiers; add yours
with :func:`register_verifier`.

Verifiers are rule-based (DAPO Eq. 7): +1 for a correct answer, -1 otherwise (graded
tasks such as creative writing may return values in between). The extracted answer must
equal the reference (for maths, as a number or symbolically: :mod:`dapo_cli.tasks.answers`),
never contain it. The length-based shaping (soft overlong punishment) is added by the
trainer, not here, because it depends on token counts.

A run's :class:`~dapo_cli.tasks.base.Scoring` adds two things: ``last_number`` (a maths
completion without ``Answer:`` or ``\\boxed{}`` is read by its last number) and
``format_reward`` (added to the reward of a response whose final answer can be extracted).
``correct``, what dynamic sampling keeps groups by and accuracy counts, stays the verifier's:
a format alone never makes a response correct.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from dapo_cli import sandbox
from dapo_cli.sandbox import SandboxUnavailable
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.answers import has_final_answer
from dapo_cli.tasks.base import Score, Scoring, extract_answer, normalize_answer
from dapo_cli.tasks.symbolic import SymbolicUnavailable

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


def score(sample: Mapping[str, Any], completion: str, scoring: Scoring = Scoring()) -> Score:
    """Score one completion for one sample, read as ``scoring`` says. Never raises on model
    output: a verifier that fails on a malformed completion scores it incorrect, with the
    error in ``details``."""
    task_type = sample["task_type"]
    verifier = get_verifier(task_type)
    try:
        if task_type in _VERIFIERS:
            result = verifier(sample, completion)
        else:
            result = TASKS[task_type].verify_with(
                sample, completion, last_number=scoring.last_number
            )
    except (SandboxUnavailable, SymbolicUnavailable):  # the machine, not the completion
        raise
    except Exception as exc:  # a broken completion must never stop a training run
        result = Score.binary(False, error=f"{type(exc).__name__}: {exc}")
    if scoring.format_reward and has_final_answer(completion):
        details = {**result.details, "format_reward": scoring.format_reward}
        result = Score(result.reward + scoring.format_reward, result.correct, details)
    return result


def score_batch(
    samples: Sequence[Mapping[str, Any]],
    completions: Sequence[str],
    repeat: int = 1,
    scoring: Scoring = Scoring(),
) -> list[Score]:
    """Scores of ``completions``, where completion i answers ``samples[i // repeat]`` (the
    ``repeat`` responses to each prompt of a rollout), read as ``scoring`` says. Several at
    once: code verifiers wait on their sandbox processes, maths on math-verify's workers."""
    owners = [samples[i // repeat] for i in range(len(completions))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(partial(score, scoring=scoring), owners, completions))


__all__ = [
    "Score",
    "Scoring",
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
