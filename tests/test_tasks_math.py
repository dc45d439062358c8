"""Math: the answer is exact integer arithmetic and the reference passes its own verifier."""

import random

import pytest

from dapo_cli.rewards import score
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.math import evaluate_expression

TASK = TASKS["math"]


@pytest.mark.parametrize(
    ("expr", "value"),
    [("1 + 2", 3), ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("10 - 4 - 3", 3), ("0 - 9", -9)],
)
def test_evaluate_expression(expr, value):
    assert evaluate_expression(expr) == value


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_reference_passes_and_corruption_fails(difficulty):
    rng = random.Random(difficulty)
    for _ in range(2000):
        sample = {"task_type": "math", **TASK.generate(rng, difficulty)}
        assert sample["prompt"].endswith("Give your final answer after 'Answer:'.")
        assert isinstance(sample["answer"], str)
        # the reference agrees with Python's own arithmetic on the expression
        assert int(sample["answer"]) == eval(sample["verify"]["expression"])  # noqa: S307
        assert score(sample, TASK.format_reference(sample)).correct
        assert score(sample, f"Let me think.\nAnswer: {sample['answer']}").reward == 1.0
        wrong = str(int(sample["answer"]) + rng.choice([-10, -1, 1, 10]))
        assert score(sample, f"Answer: {wrong}").reward == -1.0
        assert not score(sample, sample["answer"]).correct  # no "Answer:" marker


def test_difficulty_sets_size():
    rng = random.Random(0)
    easy = [TASK.generate(rng, "easy") for _ in range(200)]
    medium = [TASK.generate(rng, "medium") for _ in range(200)]
    hard = [TASK.generate(rng, "hard") for _ in range(200)]
    assert all(abs(int(s["answer"])) <= 18 for s in easy)
    assert all(s["verify"]["expression"].count(" ") == 2 for s in easy)  # one operation
    assert all(s["verify"]["expression"].count(" ") == 2 for s in medium)
    assert all(-98 <= int(s["answer"]) <= 198 for s in medium)
    assert any(abs(int(s["answer"])) >= 100 or "-" in s["answer"] for s in medium)
    assert all(s["verify"]["expression"].count(" ") >= 4 for s in hard)  # 2+ operations
    assert any("*" in s["verify"]["expression"] for s in hard)


def test_generation_is_deterministic():
    def draw(seed):
        rng = random.Random(seed)
        return [TASK.generate(rng, "medium") for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
