"""Classification: labels are certain by construction (every content word of a text comes
from its label's lists), the label set is in the prompt, and only an exact label counts."""

import random
import re
from functools import cache

import pytest

from dapo_cli.rewards import score
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.base import ANSWER_INSTRUCTION, canonical_json
from dapo_cli.tasks.templates import load_template

TASK = TASKS["classification"]
N = 2000
SENTIMENTS = {"positive", "negative", "neutral"}


@cache
def samples(difficulty: str) -> tuple:
    rng = random.Random(f"test-classification-{difficulty}")
    return tuple(
        {"task_type": "classification", **TASK.generate(rng, difficulty)} for _ in range(N)
    )


def text_of(sample) -> str:
    return re.search(r"^Text: (.*)$", sample["prompt"], re.MULTILINE).group(1)


def labels_in_prompt(sample) -> list[str]:
    return re.search(r"^Labels: (.*)\.$", sample["prompt"], re.MULTILINE).group(1).split(", ")


def evidence(text: str) -> set[str]:
    """The labels whose own words occur in ``text`` (an independent check of the label)."""
    data = load_template("classification")
    found = set()
    for topic, lists in data["topics"].items():
        if any(p in text for p in lists["predicates"]):
            found.add(topic)
    for polarity, adjectives in data["sentiment"]["adjectives"].items():
        if any(re.search(rf"\b{a}\b", text) for a in adjectives):
            found.add(polarity)
    for polarity, remarks in data["sentiment"]["remarks"].items():
        if any(r in text for r in remarks):
            found.add(polarity)
    return found


def test_template_word_lists_do_not_overlap():
    data = load_template("classification")
    positive, negative = (set(data["sentiment"]["adjectives"][p]) for p in ("positive", "negative"))
    assert not positive & negative
    seen: dict[str, str] = {}
    for topic, lists in data["topics"].items():
        for phrase in lists["subjects"] + lists["predicates"]:
            assert seen.setdefault(phrase, topic) == topic, phrase


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_reference_passes_and_corruption_fails(difficulty):
    rng = random.Random(0)
    for sample in samples(difficulty):
        labels = sample["verify"]["labels"]
        assert sample["prompt"].endswith(ANSWER_INSTRUCTION)
        assert labels_in_prompt(sample) == labels
        assert sample["answer"] in labels
        assert TASK.check_verify(sample["verify"]) is None
        canonical_json(sample["verify"])
        good = score(sample, TASK.format_reference(sample))
        assert good.correct and good.reward == 1.0
        assert score(sample, f"The text is about it.\nAnswer: **{sample['answer']}**.").correct
        other = rng.choice([label for label in labels if label != sample["answer"]])
        assert score(sample, f"Answer: {other}").reward == -1.0
        assert score(sample, f"Answer: not {sample['answer']}").reward == -1.0
        assert score(sample, f"Answer: {sample['answer']} or {other}").reward == -1.0
        assert not score(sample, "Answer:").correct
        assert not score(sample, sample["answer"]).correct  # no "Answer:" marker


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_label_is_certain(difficulty):
    for sample in samples(difficulty):
        found = evidence(text_of(sample))
        if sample["answer"] == "neutral":
            assert not found, sample["prompt"]
        else:
            assert found == {sample["answer"]}, sample["prompt"]


def test_difficulty_sets_label_sets():
    def sizes(difficulty, kind):
        is_sentiment = kind == "sentiment"
        return {
            len(s["verify"]["labels"])
            for s in samples(difficulty)
            if (set(s["verify"]["labels"]) <= SENTIMENTS) == is_sentiment
        }

    assert sizes("easy", "sentiment") == {2} and sizes("easy", "topic") == {3}
    assert sizes("medium", "sentiment") == {3} and sizes("medium", "topic") == {5}
    assert sizes("hard", "topic") == {len(load_template("classification")["topics"])}
    hard_answers = {s["answer"] for s in samples("hard")}
    assert hard_answers >= SENTIMENTS and len(hard_answers) > 8


def test_not_positive_is_not_positive():
    sample = {
        "task_type": "classification",
        "prompt": "Text: The phone is great.\nLabels: positive, negative.",
        "answer": "positive",
        "verify": {"labels": ["positive", "negative"]},
    }
    assert score(sample, "Answer: positive").correct
    assert score(sample, "Answer: Positive.").correct
    assert not score(sample, "Answer: not positive").correct
    assert not score(sample, "Answer: positive sentiment").correct
    assert not score(sample, "Answer: neutral").correct  # not a label here
    assert score(sample, "Answer: neutral").details["reason"] == "not one of the labels"
    assert score(sample, "Answer: negative\nHmm, no.\nAnswer: positive").correct  # last wins
    assert not score(sample, "Answer: positive\nHmm, no.\nAnswer: negative").correct


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_variety(difficulty):
    keys = {TASK.dedupe_key(s) for s in samples(difficulty)}
    texts = {text_of(s) for s in samples(difficulty)}
    print(f"classification {difficulty}: {len(keys)} distinct of {N} ({len(texts)} texts)")
    assert len(keys) >= 0.9 * N and len(texts) >= 0.85 * N


def test_dedupe_key_ignores_question_and_label_order():
    a = dict(samples("hard")[0])
    labels = list(reversed(a["verify"]["labels"]))
    text = text_of(a)
    b = {"prompt": f"Which label?\nText: {text}\nLabels: {', '.join(labels)}.", "verify": {}}
    b["verify"]["labels"] = labels
    assert TASK.dedupe_key(a) == TASK.dedupe_key(b)
    c = {**b, "verify": {"labels": labels[:2]}}  # another label set: another problem
    assert TASK.dedupe_key(c) != TASK.dedupe_key(a)


def test_check_verify():
    assert TASK.check_verify({"labels": ["spam", "ham"]}) is None
    assert TASK.check_verify({})
    assert TASK.check_verify({"labels": ["spam"]})
    assert TASK.check_verify({"labels": "spam, ham"})
    assert TASK.check_verify({"labels": ["spam", ""]})
    assert TASK.check_verify({"labels": ["spam", "Spam"]})
