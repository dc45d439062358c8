"""Math: the answer is exact integer arithmetic and the reference passes its own verifier."""

import random
import re

import pytest

from dapo_cli.rewards import score
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.math import evaluate_expression, worked_solution

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


@pytest.mark.parametrize(
    ("expr", "working"),
    [
        ("47 + 38", "47 + 38: 7 + 8 = 15, carry 1; 4 + 3 + 1 = 8. Answer: 85"),
        ("82 - 47", "82 - 47: 12 - 7 = 5, borrow 1; 8 - 4 - 1 = 3. Answer: 35"),
        ("41 - 57", "41 - 57 = -(57 - 41): 7 - 1 = 6; 5 - 4 = 1. Answer: -16"),
        ("7 + 38", "7 + 38: 7 + 8 = 15, carry 1; 0 + 3 + 1 = 4. Answer: 45"),
        ("5 - 9", "5 - 9 = -4. Answer: -4"),
        ("3 * 4 + 5 * 6 - 2", "3 * 4 = 12; 5 * 6 = 30; 12 + 30 = 42; 42 - 2 = 40. Answer: 40"),
        ("(8 + 1) * 3", "8 + 1 = 9; 9 * 3 = 27. Answer: 27"),
    ],
)
def test_worked_solution(expr, working):
    assert worked_solution(expr) == working


_STEP = re.compile(r"(-?\d+) ([-+*]) (-?\d+)(?: ([-+]) 1)? = (-?\d+)")


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_every_step_of_the_working_is_true(difficulty):
    rng = random.Random(f"working-{difficulty}")
    for _ in range(2000):
        expr = TASK.generate(rng, difficulty)["verify"]["expression"]
        steps = _STEP.findall(worked_solution(expr))
        assert steps, expr
        for a, op, b, carry_op, c in steps:
            value = evaluate_expression(f"{a} {op} {b}".replace("- -", "+ "))
            if carry_op:
                value += 1 if carry_op == "+" else -1
            assert value == int(c), (expr, a, op, b, c)
