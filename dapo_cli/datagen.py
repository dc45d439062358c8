"""Building a synthetic, verifiable dataset from the registered task generators.

Guarantees: the same arguments give the same records in the same order (so the same
bytes on disk); counts per task type are as balanced as N allows; no problem appears
twice, so no prompt is shared between the train and test splits (deduplicated on each
task's ``dedupe_key``, by default the normalised prompt).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from dapo_cli.errors import DapoError
from dapo_cli.tasks import BUILTIN_TASK_TYPES, DIFFICULTIES, TASKS, sample_id

MAX_ATTEMPTS_PER_SAMPLE = 200


def balanced_counts(total: int, names: Sequence[str]) -> dict[str, int]:
    """Split ``total`` over ``names`` as evenly as possible (earlier names get the remainder)."""
    base, extra = divmod(total, len(names))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}


def generate_dataset(
    num_samples: int,
    task_types: Sequence[str] | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.1,
    difficulty: str = "mixed",
    on_progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``num_samples`` records split into ``train`` and ``test``.

    ``difficulty`` is one of easy/medium/hard, or ``mixed`` (the three in turn).
    ``test_fraction`` of each task type's samples go to ``test`` (at least one when the
    fraction is positive and the type has two or more samples). ``on_progress(n)`` is
    called after each sample with the number of new samples.
    """
    task_types = list(task_types or BUILTIN_TASK_TYPES)
    if num_samples < 1:
        raise DapoError(f"--num-samples must be at least 1, got {num_samples}")
    if not 0.0 <= test_fraction < 1.0:
        raise DapoError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if difficulty != "mixed" and difficulty not in DIFFICULTIES:
        raise DapoError(
            f"unknown difficulty {difficulty!r}; use one of {', '.join(DIFFICULTIES)}, mixed"
        )
    unknown = [t for t in task_types if t not in TASKS]
    if unknown:
        raise DapoError(
            f"unknown task type(s) {', '.join(unknown)}; known: {', '.join(sorted(TASKS))}"
        )
    if len(set(task_types)) != len(task_types):
        raise DapoError(f"task types listed twice: {', '.join(task_types)}")

    records: list[dict[str, Any]] = []
    for task_type, count in balanced_counts(num_samples, task_types).items():
        records.extend(
            _generate_type(task_type, count, seed, test_fraction, difficulty, on_progress)
        )
    return records


def _generate_type(
    task_type: str,
    count: int,
    seed: int,
    test_fraction: float,
    difficulty: str,
    on_progress: Callable[[int], None] | None,
) -> list[dict[str, Any]]:
    task = TASKS[task_type]
    # a string seed is hashed deterministically (unlike hash() of a str)
    rng = random.Random(f"dapo-gen-data:{seed}:{task_type}")
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    exhausted: set[str] = set()
    for i in range(count):
        # mixed: the levels in turn; a level whose problems run out hands over to the others
        wanted = DIFFICULTIES[i % len(DIFFICULTIES)] if difficulty == "mixed" else difficulty
        levels = [wanted] + [d for d in DIFFICULTIES if d != wanted and difficulty == "mixed"]
        sample = key = None
        for level in (lv for lv in levels if lv not in exhausted):
            for _ in range(MAX_ATTEMPTS_PER_SAMPLE):
                candidate = task.generate(rng, level)
                candidate_key = task.dedupe_key(candidate)
                if candidate_key not in seen:
                    sample, key = candidate, candidate_key
                    break
            if sample is not None:
                break
            exhausted.add(level)
        if sample is None:
            raise DapoError(
                f"could only generate {len(out)} distinct {task_type} problems at difficulty "
                f"{difficulty}; ask for fewer samples, another difficulty, or extend "
                f"templates/tasks/{task_type}.json"
            )
        seen.add(key)
        out.append(
            {
                "id": sample_id(task_type, sample["prompt"]),
                "task_type": task_type,
                "difficulty": level,
                "split": "train",
                "prompt": sample["prompt"],
                "answer": sample["answer"],
                "verify": sample["verify"],
            }
        )
        if on_progress:
            on_progress(1)
    n_test = round(count * test_fraction)
    if test_fraction > 0 and count >= 2:
        n_test = min(max(n_test, 1), count - 1)
    for index in rng.sample(range(count), n_test):
        out[index]["split"] = "test"
    return out
