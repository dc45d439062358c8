"""Creative writing: the reference piece meets every constraint, the whole multi-line piece
after the last 'Answer:' is what counts, and the reward is graded by constraints met."""

import random
import re
from functools import cache

import pytest

from dapo_cli.rewards import score
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.base import ANSWER_INSTRUCTION, canonical_json
from dapo_cli.tasks.templates import load_template

TASK = TASKS["creative"]
N = 2000


@cache
def samples(difficulty: str) -> tuple:
    rng = random.Random(f"test-creative-{difficulty}")
    return tuple({"task_type": "creative", **TASK.generate(rng, difficulty)} for _ in range(N))


def make(required=("wave", "tide"), low=5, high=12, title=False):
    verify = {"required_words": list(required), "min_words": low, "max_words": high}
    return {"task_type": "creative", "prompt": "Write.", "answer": "", "verify": verify | {
        "title": title}}  # fmt: skip


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_reference_meets_every_constraint(difficulty):
    for sample in samples(difficulty):
        v = sample["verify"]
        assert sample["prompt"].endswith(ANSWER_INSTRUCTION)
        assert TASK.check_verify(v) is None
        canonical_json(v)
        for word in v["required_words"]:
            assert word in sample["prompt"]
        assert f"between {v['min_words']} and {v['max_words']} words" in sample["prompt"]
        assert ("'Title: <your title>'" in sample["prompt"]) == v["title"]
        # checked independently of the verifier: plain tokens, the title line left out
        lines = sample["answer"].split("\n")
        assert lines[0].startswith("Title: ") == v["title"]
        body = " ".join(lines[1:] if v["title"] else lines)
        tokens = [t.strip(".,!?'").lower() for t in body.split()]
        assert v["min_words"] <= len(tokens) <= v["max_words"]
        assert all(w in tokens for w in v["required_words"])
        assert len(lines) > 1 or len(set(tokens)) > 10  # a real piece, not a word list
        good = score(sample, TASK.format_reference(sample))
        assert good.correct and good.reward == 1.0, good.details
        assert score(sample, f"Here it is.\nAnswer: {sample['answer']}").reward == 1.0


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_corruption_fails(difficulty):
    rng = random.Random(0)
    for sample in samples(difficulty)[:500]:
        v, piece = sample["verify"], sample["answer"]
        n = len(v["required_words"]) + 1 + v["title"]  # constraints
        word = rng.choice(v["required_words"])
        missing = re.sub(rf"\b{word}\b", "thing", piece, flags=re.IGNORECASE)
        result = score(sample, f"Answer:\n{missing}")
        assert not result.correct and result.reward == pytest.approx(-1 + 2 * (n - 1) / n)
        assert result.details["failed"] == [f"required word {word!r}"]
        short = " ".join(piece.split()[: v["min_words"] // 2])
        assert not score(sample, f"Answer:\n{short}").correct
        assert score(sample, "Answer:").reward == -1.0
        assert score(sample, piece).reward == -1.0  # no "Answer:" marker
        if v["title"]:
            untitled = piece.split("\n", 1)[1]
            assert score(sample, f"Answer:\n{untitled}").details["failed"] == [
                "first line 'Title: ...'"
            ]


def test_whole_piece_after_last_answer():
    sample = make(low=5, high=12)
    piece = "The wave rolls in.\nThe tide goes out.\nAnd I stay."
    assert score(sample, f"Answer:\n{piece}").correct
    # only the first line would miss "tide" and be too short
    assert score(sample, f"Answer: {piece}").correct
    draft = "Answer: wave\n"
    assert score(sample, f"{draft}Let me improve it.\nAnswer:\n{piece}").correct
    assert not score(sample, f"Answer:\n{piece}\nActually:\nAnswer: wave tide").correct


def test_words_are_whole_words_and_case_insensitive():
    sample = make(low=1, high=50)
    assert score(sample, "Answer: A WAVE met the Tide.").correct
    result = score(sample, "Answer: Waves met the tides.")
    assert not result.correct and result.reward == pytest.approx(-1 + 2 / 3)
    assert len(result.details["failed"]) == 2


def test_word_count_bounds_and_title():
    sample = make(required=(), low=3, high=5, title=True)
    assert score(sample, "Answer:\nTitle: A Very Long Title Here\nOne two three.").correct
    assert not score(sample, "Answer:\nTitle: Sea\nOne two.").correct  # 2 words
    assert not score(sample, "Answer:\nTitle: Sea\nOne two three four five six.").correct
    no_title = score(sample, "Answer:\nOne two three four.")
    assert not no_title.correct and no_title.reward == 0.0  # 1 of 2 constraints met
    assert score(sample, "Answer:\n**Title: Sea**\nOne two three.").correct


def test_variety():
    for difficulty in ("easy", "medium", "hard"):
        distinct = len({TASK.dedupe_key(s) for s in samples(difficulty)})
        print(f"creative {difficulty}: {distinct} distinct of {N}")
        assert distinct >= 0.9 * N


def test_dedupe_key_ignores_phrasing():
    a = samples("medium")[0]
    b = {**a, "prompt": "Something else entirely."}
    assert TASK.dedupe_key(a) == TASK.dedupe_key(b)
    user = {"prompt": "Write  a haiku.", "verify": {"min_words": 3}}
    assert TASK.dedupe_key(user) == "write a haiku."


def test_lines_fit_every_range():
    # a filler line must always fit between the lower and upper bound
    data = load_template("creative")
    longest = max(len(line.split()) for f in data["forms"].values() for line in f["lines"])
    assert longest < 25 and all(line.count("{w}") == 1 for f in data["forms"].values()
                                for line in f["lines"])  # fmt: skip


def test_check_verify():
    assert TASK.check_verify(make()["verify"]) is None
    assert TASK.check_verify({"max_words": 50}) is None
    assert TASK.check_verify({})
    assert TASK.check_verify({"required_words": "wave"})
    assert TASK.check_verify({"min_words": "10"})
    assert TASK.check_verify({"min_words": -1})
    assert TASK.check_verify({"min_words": 10, "max_words": 5})
    assert TASK.check_verify({"title": "yes"})
