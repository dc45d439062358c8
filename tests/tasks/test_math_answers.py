"""Maths answers as real models write them: extraction (Answer:, \\boxed{}, the last number),
equivalence to dataset references (numbers exactly, LaTeX symbolically), the scoring options,
and that no completion can hang or crash scoring, from the threads score_batch uses."""

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from dapo_cli.rewards import score, score_batch
from dapo_cli.tasks import symbolic
from dapo_cli.tasks.answers import MAX_ANSWER_CHARS, equivalent, final_answer, has_final_answer
from dapo_cli.tasks.base import Scoring, exact_match, normalize_answer
from dapo_cli.tasks.symbolic import SymbolicUnavailable, screen


def math_sample(answer: str) -> dict:
    return {"task_type": "math", "answer": answer, "prompt": "p", "verify": {"expression": "1"}}


@pytest.mark.parametrize(
    ("completion", "found"),
    [
        ("so 7. Answer: 42", ("42", "answer")),
        ("\\boxed{3}\nAnswer: 4", ("4", "answer")),  # the Answer: line comes first
        ("Answer: $\\boxed{\\frac{1}{2}}$.", ("\\frac{1}{2}", "answer")),  # unwrapped
        ("Answer:\n\\boxed{7}", ("7", "answer")),  # on the line below the marker
        ("first \\boxed{1}, then $\\boxed{x^{2}}$", ("x^{2}", "boxed")),  # the last one
        ("\\fbox{\\sqrt{2}} is it", ("\\sqrt{2}", "boxed")),
        ("hence $\\boxed 5$.", ("5", "boxed")),
        ("\\boxed{\\{1, 2\\}}", ("\\{1, 2\\}", "boxed")),
        ("\\boxed{1} and then \\boxed{2", None),  # truncated in its last answer: none
        ("the total is 12", None),  # the last number only when asked
    ],
)
def test_final_answer_rules_in_order(completion, found):
    assert final_answer(completion) == found


@pytest.mark.parametrize(
    ("completion", "number"),
    [
        ("The total is 12.", "12"),
        ("we get 5 - 3 = 2 apples", "2"),
        ("x = -3", "-3"),
        ("10 - 3", "3"),  # a minus after a number is subtraction, not a sign
        ("about 1,250,000 people", "1,250,000"),
        ("half: 1/2", "1/2"),
        ("pi is 3.14159...", "3.14159"),
        ("\\boxed{1} and then 2 \\boxed{", "2"),
    ],
)
def test_last_number_when_asked(completion, number):
    assert final_answer(completion, last_number=True) == (number, "last_number")
    assert final_answer("no numbers here", last_number=True) is None


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("0.50", ".5"),
        (".5", "1/2"),
        ("1/2", "\\frac{1}{2}"),
        ("\\dfrac12", "0.5"),
        ("\\tfrac{3}{4}", "\\dfrac{3}{4}"),
        ("\\frac{2}{4}", "\\frac12"),
        ("-\\frac{1}{2}", "\\frac{-1}{2}"),
        ("- 3", "-3"),
        ("\u22123", "-3"),  # the typographic minus
        ("+5", "5"),
        ("1,000", "1000"),
        ("1{,}000", "1000"),
        ("1\\,000", "1000"),
        ("12,345,678", "12345678"),
        ("7.0", "7"),
        ("50\\%", "50"),
        ("50%", "50"),
        ("$5$", "5"),
        ("\\(5\\)", "5"),
        ("\\text{5}", "5"),
        ("5 \\text{ cm}", "5"),
        ("18 dollars", "18"),
        ("\\$18.00", "18"),
        ("30^\\circ", "30"),
        ("x = 5", "5"),
        ("5", "x=5"),
        ("**42**", "42"),
        ("\\boxed{42}", "42"),
        ("\\text{(A)}", "(A)"),
    ],
)
def test_numbers_and_decoration_are_equivalent(answer, reference):
    assert equivalent(answer, reference)


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("12", "13"),
        ("-5", "5"),
        ("47 + 38", "85"),  # restating the question is not an answer to it
        ("\\sqrt{25}", "5"),  # a number reference takes a number
        ("0.333333", "\\frac13"),  # numbers compare exactly, no rounding
        ("1,00", "100"),  # not a thousands separator
        ("5 pi", "5"),  # a word that changes the value is no unit
        ("5 million", "5"),
        ("5, 6", "5"),
        ("\\frac{1}{0}", "0"),
        ("", ""),
    ],
)
def test_different_answers_are_not_equivalent(answer, reference):
    assert not equivalent(answer, reference)


@pytest.mark.parametrize(
    ("answer", "reference", "same"),
    [
        ("2\\sqrt{3}", "\\sqrt{12}", True),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
        ("\\left(3, \\frac{\\pi}{2}\\right)", "(3,\\frac{\\pi}{2})", True),
        ("(x+1)^2", "x^2+2x+1", True),
        ("2\\sqrt{2}", "\\sqrt{12}", False),
        ("\\frac{\\pi}{3}", "\\frac{\\pi}{2}", False),
    ],
)
def test_latex_references_are_compared_symbolically(answer, reference, same):
    assert equivalent(answer, reference) is same


def test_generated_math_references_pass_and_wrong_ones_fail():
    sample = math_sample("-16")
    assert score(sample, "41 - 57 = -(57 - 41): 7 - 1 = 6; 5 - 4 = 1. Answer: -16").correct
    assert score(sample, "So the answer is $\\boxed{-16}$.").correct
    assert not score(sample, "Answer: 16").correct
    assert not score(sample, "-16").correct  # no Answer:, no \boxed{}: no answer


def test_math_score_names_the_answer_and_the_rule():
    found = score(math_sample("\\frac{1}{2}"), "so \\boxed{0.5}")
    assert (found.reward, found.correct) == (1.0, True)
    assert found.details == {"extracted": "0.5", "rule": "boxed"}
    missing = score(math_sample("1"), "no idea")
    assert (missing.reward, missing.correct, missing.details["extracted"]) == (-1.0, False, None)


def test_last_number_is_read_only_when_asked():
    sample = math_sample("1000")
    completion = "Adding them gives 1,000."
    assert not score(sample, completion).correct
    read = score(sample, completion, Scoring(last_number=True))
    assert read.correct and read.details["rule"] == "last_number"
    # other task types ignore it
    reasoning = {"task_type": "reasoning", "answer": "3", "verify": {}}
    assert not score(reasoning, "it is 3", Scoring(last_number=True)).correct


def test_format_reward_is_added_but_never_makes_a_response_correct():
    scoring = Scoring(format_reward=0.25)
    sample = math_sample("7")
    right = score(sample, "Answer: 7", scoring)
    wrong = score(sample, "Answer: 8", scoring)
    boxed_wrong = score(sample, "\\boxed{8}", scoring)
    unformatted = score(sample, "it is 7", Scoring(last_number=True, format_reward=0.25))
    assert (right.reward, right.correct) == (1.25, True)
    assert (wrong.reward, wrong.correct) == (-0.75, False)
    assert (boxed_wrong.reward, boxed_wrong.correct) == (-0.75, False)
    assert (unformatted.reward, unformatted.correct) == (1.0, True)  # the last number: no bonus
    assert score(sample, "Answer: 8").reward == -1.0  # off by default


def test_has_final_answer_counts_answers_below_the_marker():
    assert has_final_answer("Answer:\n```python\ndef f(): pass\n```")  # code and creative tasks
    assert has_final_answer("\\boxed{x}")
    assert not has_final_answer("Answer:   \n")
    assert not has_final_answer("the total is 12")


def test_score_batch_takes_the_scoring_options():
    samples = [math_sample("3"), math_sample("4")]
    texts = ["Answer: 3", "so 3", "it is 4", "\\boxed{4}"]
    plain = score_batch(samples, texts, 2)
    read = score_batch(samples, texts, 2, Scoring(last_number=True, format_reward=0.5))
    assert [s.correct for s in plain] == [True, False, False, True]
    assert [s.correct for s in read] == [True, True, True, True]
    assert [s.reward for s in read] == [1.5, 1.0, 1.0, 1.5]


def test_training_and_eval_score_with_the_configured_options():
    import torch

    from dapo_cli.config import EvalSettings, load_config
    from dapo_cli.step import score_responses

    config = load_config(
        None, ["reward.last_number=true", "reward.format_reward=0.5",
               "algorithm.soft_overlong_punishment=false"],
    )  # fmt: skip
    rollout = SimpleNamespace(
        response_texts=lambda tokenizer: ["so 3", "Answer: 2"],
        lengths=torch.tensor([3, 3]),
    )
    reward, correct = score_responses(
        SimpleNamespace(tokenizer=None), rollout, [math_sample("3")], 2, config
    )
    assert reward.tolist() == [1.0, -0.5] and correct.tolist() == [True, False]
    assert EvalSettings().scoring == Scoring() == load_config().reward.scoring()


@pytest.mark.parametrize(
    "text",
    ["9^9^9^9", "10**10**10", "9^{9^{9}}", "2^{100000}", "(10^{10})!", "12345!", "1" * 200,
     "x" * 400],
)  # fmt: skip
def test_screen_refuses_what_sympy_cannot_finish(text):
    assert screen(text)


@pytest.mark.parametrize("text", ["2^{10}", "x^2+2x+1", "e^{i\\pi/4}", "10^{-3}", "5!"])
def test_screen_lets_ordinary_answers_through(text):
    assert screen(text) is None


_HOSTILE = [
    "Answer: 9^9^9^9",
    "Answer: 10**10**10",
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{(10^{10})!}",
    "Answer: \\frac{1}{0}",
    "Answer: 1e999999999",
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "\\boxed{" + "{" * 5000,
    "x" * 100_000 + " Answer: " + "9" * 100_000,
    "7" * 100_000,
    "Answer: \ud800\udfff\ud800",
    "\\boxed{\ud800}",
    "\\boxed{",
    "Answer: " + "\\sqrt{" * 2000 + "2" + "}" * 2000,
    "\\boxed{" + "\\sqrt{" * 40 + "2" + "}" * 40 + "}",  # short enough for the worker
    "\\boxed{\\binom{10^{7}}{5000000}}",  # passes the screen: the worker is cut off
]


@pytest.mark.parametrize("reference", ["5", "2\\sqrt{3}"])
def test_hostile_completions_score_false_soon_from_a_worker_thread(reference):
    equivalent("\\sqrt{3}", "2\\sqrt{3}")  # start a worker first: start-up is not the bound
    sample = math_sample(reference)
    scoring = Scoring(last_number=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        for completion in _HOSTILE:
            start = time.monotonic()
            result = pool.submit(score, sample, completion, scoring).result(timeout=30)
            took = time.monotonic() - start
            assert result.correct is False and isinstance(result.correct, bool)
            assert took < symbolic.SECONDS + 2.0, (completion[:40], took)


def test_a_huge_exponent_is_not_written_out_by_any_answer_task():
    start = time.monotonic()
    assert not exact_match("Answer: 1e999999999", "1").correct  # reasoning, puzzles, ...
    assert normalize_answer("9" * 5000) == "9" * 5000  # left as text, not an int
    assert time.monotonic() - start < 1.0


def test_a_long_answer_is_wrong_without_being_read():
    assert not equivalent("5" + " " * MAX_ANSWER_CHARS, "5")


def test_a_check_past_its_time_is_cut_off_and_the_worker_replaced(monkeypatch):
    equivalent("\\sqrt{5}", "2\\sqrt{7}")  # a warm worker
    monkeypatch.setattr(symbolic, "SECONDS", 0.0)
    started = len(symbolic._started)
    assert not equivalent("\\sqrt{8}", "2\\sqrt{2}")  # true, but not decided in time
    assert len(symbolic._started) == started - 1  # that worker is gone
    monkeypatch.setattr(symbolic, "SECONDS", 2.0)
    assert equivalent("\\sqrt{18}", "3\\sqrt{2}")  # a fresh worker answers


def test_workers_outlive_a_ctrl_c_so_the_interrupted_step_can_finish():
    equivalent("\\sqrt{6}", "2\\sqrt{7}")  # a warm worker
    workers = list(symbolic._started)
    for worker in workers:
        os.kill(worker.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends the group
    assert equivalent("\\sqrt{20}", "2\\sqrt{5}")
    assert all(worker.proc.poll() is None for worker in workers)


def test_a_missing_math_verify_stops_scoring_instead_of_scoring_wrong(monkeypatch):
    monkeypatch.setattr(symbolic, "_idle", [])
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(SymbolicUnavailable, match="math-verify"):
        score(math_sample("3\\sqrt{3}"), "\\boxed{\\sqrt{27}}")
