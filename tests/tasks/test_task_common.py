"""What every built-in task type promises: deterministic generation, thousands of distinct
problems at mixed difficulty, and prompts that ask for an extractable answer."""

import random

import pytest

from dapo_cli.datagen import generate_dataset
from dapo_cli.tasks import BUILTIN_TASK_TYPES, TASKS


@pytest.mark.parametrize("task_type", BUILTIN_TASK_TYPES)
def test_generation_is_deterministic(task_type):
    task = TASKS[task_type]

    def draw(seed):
        rng = random.Random(seed)
        return [task.generate(rng, d) for d in ("easy", "medium", "hard") * 10]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize("task_type", BUILTIN_TASK_TYPES)
def test_mixed_dataset_of_2000_distinct_problems(task_type):
    records = generate_dataset(2000, [task_type], seed=3)
    assert len({TASKS[task_type].dedupe_key(r) for r in records}) == 2000
    assert all("Answer:" in r["prompt"] for r in records)
