"""Dataset generation: balance, determinism, no problem shared between the splits."""

from collections import Counter

import pytest

from dapo_cli.datagen import balanced_counts, generate_dataset
from dapo_cli.errors import DapoError
from dapo_cli.tasks import TASKS


def test_balanced_counts():
    assert balanced_counts(10, ["a", "b", "c"]) == {"a": 4, "b": 3, "c": 3}
    assert balanced_counts(2, ["a", "b", "c"]) == {"a": 1, "b": 1, "c": 0}


def test_math_dataset_properties():
    records = generate_dataset(300, ["math"], seed=3, test_fraction=0.2)
    assert len(records) == 300
    assert Counter(r["split"] for r in records) == {"train": 240, "test": 60}
    assert Counter(r["difficulty"] for r in records) == {"easy": 100, "medium": 100, "hard": 100}
    keys = [TASKS["math"].dedupe_key(r) for r in records]
    assert len(set(keys)) == len(keys)  # no duplicates within or across splits
    assert len({r["id"] for r in records}) == 300


def test_deterministic_and_seed_sensitive():
    assert generate_dataset(60, ["math"], seed=1) == generate_dataset(60, ["math"], seed=1)
    assert generate_dataset(60, ["math"], seed=1) != generate_dataset(60, ["math"], seed=2)


def test_small_counts_keep_a_train_sample():
    records = generate_dataset(2, ["math"], test_fraction=0.9)
    assert Counter(r["split"] for r in records) == {"train": 1, "test": 1}
    assert [r["split"] for r in generate_dataset(1, ["math"], test_fraction=0.5)] == ["train"]


def test_exhausted_problem_space_is_a_clear_error():
    # easy math has 10 * 10 * 2 distinct problems
    with pytest.raises(
        DapoError, match=r"could only generate 1\d\d distinct math problems at difficulty easy"
    ):
        generate_dataset(500, ["math"], difficulty="easy")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "--num-samples must be at least 1"),
        ({"test_fraction": 1.0}, "--test-fraction must be in"),
        ({"difficulty": "insane"}, "unknown difficulty 'insane'"),
        ({"task_types": ["math", "poetry"]}, "unknown task type"),
        ({"task_types": ["math", "math"]}, "listed twice"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"num_samples": 10, "task_types": ["math"], **kwargs}
    with pytest.raises(DapoError, match=message):
        generate_dataset(args.pop("num_samples"), args.pop("task_types"), **args)


def test_mixed_difficulty_fills_from_other_levels_when_one_runs_out():
    records = generate_dataset(900, ["math"])  # easy math has only 200 distinct problems
    levels = Counter(r["difficulty"] for r in records)
    assert len(records) == 900 and levels["easy"] <= 200
    assert levels["medium"] + levels["hard"] >= 700
    keys = [TASKS["math"].dedupe_key(r) for r in records]
    assert len(set(keys)) == 900
