"""Answer extraction and normalisation: the part of every verifier a model can game."""

import pytest

from dapo_cli.rewards import register_verifier, score
from dapo_cli.tasks.base import Score, exact_match, extract_answer, normalize_answer


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Answer: 42", "42"),
        ("I think 3. Answer: 5", "5"),
        ("Answer: 3\nwait, no.\nAnswer: 4", "4"),  # the last one wins
        ("answer:7", "7"),
        ("ANSWER :  seven  ", "seven"),
        ("Answer: 12\nbecause 5 + 7 = 12", "12"),  # only the line after the marker
        ("no marker here", None),
        ("Answer:", None),
        ("Answer:   \n", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1,000", "1000"),
        ("7.0", "7"),
        ("+5", "5"),
        ("-0", "0"),
        ("2.50", "2.5"),
        ("  Positive ", "positive"),
        ("**42**", "42"),
        ("`yes`", "yes"),
        ("'Alice'", "alice"),
        ("great-grandparent.", "great-grandparent"),
        ("12,345,678", "12345678"),
    ],
)
def test_normalize_equal(a, b):
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("not positive", "positive"),
        ("great-grandparent", "grandparent"),
        ("great-great-grandparent", "great-grandparent"),
        ("10", "100"),
        ("1,00", "100"),  # not a thousands separator
        ("-5", "5"),
        ("7.01", "7"),
    ],
)
def test_normalize_different(a, b):
    assert normalize_answer(a) != normalize_answer(b)


def test_exact_match_is_never_substring():
    assert not exact_match("Answer: not positive", "positive").correct
    assert not exact_match("Answer: positive", "not positive").correct
    assert not exact_match("Answer: 1234", "23").correct
    assert exact_match("Answer: 1,234", "1234").correct


def test_binary_score_values():
    assert exact_match("Answer: 3", "3") == Score(1.0, True, {"extracted": "3"})
    wrong = exact_match("Answer: 4", "3")
    assert (wrong.reward, wrong.correct) == (-1.0, False)
    missing = exact_match("3", "3")
    assert (missing.reward, missing.correct) == (-1.0, False)


def test_registered_verifier_is_used_and_errors_score_incorrect():
    def shouty(sample, completion):
        return Score.binary(completion.isupper())

    register_verifier("test-shouty", shouty)
    assert score({"task_type": "test-shouty", "answer": ""}, "YES").correct
    assert not score({"task_type": "test-shouty", "answer": ""}, "yes").correct

    def broken(sample, completion):
        raise ZeroDivisionError("boom")

    register_verifier("test-broken", broken)
    result = score({"task_type": "test-broken", "answer": ""}, "x")
    assert not result.correct and result.reward == -1.0
    assert "ZeroDivisionError" in result.details["error"]


def test_unknown_task_type_raises():
    with pytest.raises(KeyError, match="no verifier"):
        score({"task_type": "nope", "answer": "1"}, "Answer: 1")
