"""Task types: each owns its generator and its verifier. ``TASKS`` maps name -> Task.

Add your own with :func:`register_task` (a generator and a verifier) or, for data you bring
yourself, only a verifier with :func:`dapo_cli.rewards.register_verifier`.
"""

from __future__ import annotations

from dapo_cli.tasks.base import (
    ANSWER_INSTRUCTION,
    DIFFICULTIES,
    Score,
    Scoring,
    Task,
    exact_match,
    extract_answer,
    normalize_answer,
    normalize_prompt,
    sample_id,
)
from dapo_cli.tasks.classification import ClassificationTask
from dapo_cli.tasks.code import CodeTask
from dapo_cli.tasks.creative import CreativeTask
from dapo_cli.tasks.math import MathTask
from dapo_cli.tasks.puzzle import PuzzleTask
from dapo_cli.tasks.reasoning import ReasoningTask

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` available to ``gen-data`` and to scoring under ``task.name``."""
    if not task.name:
        raise ValueError("a task needs a non-empty name")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise KeyError(f"unknown task type {name!r} (known: {known})") from None


for _task in (
    MathTask(),
    ReasoningTask(),
    ClassificationTask(),
    CodeTask(),
    CreativeTask(),
    PuzzleTask(),
):
    register_task(_task)

BUILTIN_TASK_TYPES = ("math", "reasoning", "classification", "code", "creative", "puzzle")

__all__ = [
    "ANSWER_INSTRUCTION",
    "BUILTIN_TASK_TYPES",
    "DIFFICULTIES",
    "TASKS",
    "Score",
    "Scoring",
    "Task",
    "exact_match",
    "extract_answer",
    "get_task",
    "normalize_answer",
    "normalize_prompt",
    "register_task",
    "sample_id",
]
