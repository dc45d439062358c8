"""Puzzles: many correct answers, checked by their properties; the prompt states all of them;
the reference is one correct answer drawn at random; nothing else counts."""

import random
import re
from collections import Counter

import pytest

from dapo_cli.rewards import score
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.puzzle import parse_whole, solutions

TASK = TASKS["puzzle"]


def samples(difficulty, n=1000):
    rng = random.Random(f"test-puzzle-{difficulty}")
    return [{"task_type": "puzzle", **TASK.generate(rng, difficulty)} for _ in range(n)]


def stated(prompt):
    """(low, high, divisor, parity) read back from the prompt's words."""
    m = re.search(r"(\d+) (?:to|and|and at most) (\d+)", prompt)
    low, high = int(m.group(1)), int(m.group(2))
    d = int(re.search(r"multiple of (\d+)", prompt).group(1))
    parity = re.search(r"\b(odd|even) multiple", prompt)
    return low, high, d, parity.group(1) if parity else None


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_the_prompt_states_the_checked_properties_and_the_reference_is_one_of_several(difficulty):
    divisors = Counter()
    for s in samples(difficulty):
        v = s["verify"]
        assert stated(s["prompt"]) == (v["low"], v["high"], v["multiple"], v["parity"])
        found = solutions(v)
        assert len(found) >= 3
        assert int(s["answer"]) in found
        assert score(s, f"Answer: {s['answer']}").correct
        divisors[v["multiple"]] += 1
    lo, hi = {"easy": (2, 5), "medium": (3, 12), "hard": (3, 9)}[difficulty]
    assert set(divisors) == set(range(lo, hi + 1))


def test_references_are_spread_over_the_correct_answers():
    # one problem, many draws: the reference is not always the smallest or the largest answer
    rng = random.Random(0)
    answers = set()
    for _ in range(300):
        s = TASK.generate(rng, "medium")
        found = solutions(s["verify"])
        answers.add(found.index(int(s["answer"])) / (len(found) - 1))
    assert min(answers) == 0 and max(answers) == 1 and len(answers) > 20


def test_every_correct_answer_scores_and_nothing_else_does():
    sample = {"task_type": "puzzle", "answer": "36",
              "verify": {"multiple": 4, "low": 36, "high": 58, "parity": None}}  # fmt: skip
    for x in range(0, 130):
        ok = 36 <= x <= 58 and x % 4 == 0
        assert score(sample, f"Answer: {x}").correct is ok, x
    assert [x for x in range(130) if score(sample, f"Answer: {x}").correct] == solutions(
        sample["verify"]
    ) == [36, 40, 44, 48, 52, 56]  # fmt: skip


@pytest.mark.parametrize(
    ("completion", "correct", "reason"),
    [
        ("I pick 44. Answer: 44", True, None),
        ("Answer: 44.", True, None),
        ("Answer: 12\nno wait. Answer: 48", True, None),
        ("Answer: 044", False, "not a whole number"),
        ("Answer: +44", False, "not a whole number"),
        ("Answer: 44 or 48", False, "not a whole number"),
        ("Answer: forty-four", False, "not a whole number"),
        ("Answer: 60", False, "outside 36..58"),
        ("Answer: 32", False, "outside 36..58"),
        ("Answer: 46", False, "not a multiple of 4"),
        ("44", False, "no 'Answer:' found"),
    ],
)
def test_verifier_edge_cases(completion, correct, reason):
    sample = {"task_type": "puzzle", "answer": "36",
              "verify": {"multiple": 4, "low": 36, "high": 58, "parity": None}}  # fmt: skip
    got = score(sample, completion)
    assert got.correct is correct
    assert got.reward == (1.0 if correct else -1.0)
    assert got.details.get("reason") == reason


def test_parity_is_checked():
    sample = {"task_type": "puzzle", "answer": "21",
              "verify": {"multiple": 3, "low": 15, "high": 40, "parity": "odd"}}  # fmt: skip
    assert solutions(sample["verify"]) == [15, 21, 27, 33, 39]
    assert score(sample, "Answer: 27").correct
    assert score(sample, "Answer: 24").details["reason"] == "not odd"


def test_parse_whole():
    assert parse_whole(" 7 ") == 7 and parse_whole("0") == 0 and parse_whole("12.") == 12
    assert parse_whole("1.5") is None and parse_whole("-3") is None and parse_whole("") is None


def test_a_verify_without_its_keys_is_reported():
    assert TASK.check_verify({"multiple": 3}) == "verify lacks low, high"
    assert TASK.check_verify({"multiple": 3, "low": 1, "high": 9, "parity": "prime"})
    assert TASK.check_verify({"multiple": 3, "low": 1, "high": 9}) is None
