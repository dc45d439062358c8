"""Reasoning: every generated answer is re-derived here from the prompt text by an
independent solver, the reference passes its own verifier, and the traps of the original
project (a grandparent's grandparent; substring matching) stay fixed."""

import itertools
import random
import re
from functools import cache

import pytest

from dapo_cli.rewards import score
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.base import ANSWER_INSTRUCTION, canonical_json, normalize_answer
from dapo_cli.tasks.reasoning import relation_word, settle
from dapo_cli.tasks.templates import load_template

TASK = TASKS["reasoning"]
N = 2000
# written out by hand, not computed: the relation n generations up
ANCESTORS = {
    1: "parent",
    2: "grandparent",
    3: "great-grandparent",
    4: "great-great-grandparent",
    5: "great-great-great-grandparent",
    6: "great-great-great-great-grandparent",
}


@cache
def samples(difficulty: str) -> tuple:
    rng = random.Random(f"test-reasoning-{difficulty}")
    return tuple({"task_type": "reasoning", **TASK.generate(rng, difficulty)} for _ in range(N))


def sentences(prompt: str) -> list[str]:
    return re.split(r"(?<=[.?])\s+", prompt)


# ------------------------------------------------------------------ independent solvers


def solve_ordering(prompt: str) -> str:
    more = {}  # word -> True when "a is WORD than b" means a ranks higher
    for c in load_template("reasoning")["comparisons"]:
        more[c["more"]], more[c["less"]] = True, False
    above: dict[str, set] = {}
    for a, word, b in re.findall(r"(\w+) is (\w+) than (\w+)\.", prompt):
        hi, lo = (a, b) if more[word] else (b, a)
        above.setdefault(hi, set()).add(lo)
        above.setdefault(lo, set())

    def below(p):  # everyone p ranks above, by transitivity
        return set().union(*({q} | below(q) for q in above[p])) if above[p] else set()

    ranking = sorted(above, key=lambda p: -len(below(p)))
    if m := re.search(r"Is (\w+) (\w+) than (\w+)\?", prompt):
        x, word, y = m.groups()
        return "yes" if (y in below(x)) == more[word] else "no"
    if re.search(r"the second \w+\?", prompt):
        return ranking[1]
    word = re.search(r"the (\w+)\?", prompt).group(1)
    superlative = {c["most"]: True for c in load_template("reasoning")["comparisons"]}
    return ranking[0] if superlative.get(word, False) else ranking[-1]


def solve_kinship(prompt: str) -> str:
    def gens(rel):  # signed generations from the subject to the other person
        n = 1 + rel.count("grand") + rel.count("great-")
        return n if rel.endswith("parent") else -n

    edges: dict[str, list] = {}
    facts = re.findall(r"(\w+) is (\w+)'s ([a-z-]+)\.", prompt)
    facts += [(a, b, rel) for a, rel, b in re.findall(r"(\w+) is a ([a-z-]+) of (\w+)\.", prompt)]
    for a, b, rel in facts:
        edges.setdefault(a, []).append((b, gens(rel)))
        edges.setdefault(b, []).append((a, -gens(rel)))
    x, y = re.search(r"(\w+) is (\w+)'s ____", prompt).groups()
    distance, todo = {x: 0}, [x]
    while todo:
        p = todo.pop()
        for q, g in edges[p]:
            if q not in distance:
                distance[q] = distance[p] + g
                todo.append(q)
    d = distance[y]
    return ANCESTORS[d] if d > 0 else ANCESTORS[-d].replace("parent", "child")


def solve_boolean(sample) -> str:
    _, assignments, expr = sample["verify"]["canonical"].split("|")
    assert expr in sample["prompt"] and assignments in sample["prompt"]
    values = dict(part.split(" = ") for part in assignments.split(", "))
    python = re.sub(r"\b[A-Z]\b", lambda m: values[m.group(0)].capitalize(), expr)
    return str(eval(python)).lower()  # noqa: S307 (our own and/or/not expression)


SYLLOGISM_PREMISES = [
    (r"All (\w+) are (\w+)\.", "all"),
    (r"Every (\w+) is a (\w+)\.", "all"),
    (r"Some (\w+) are (\w+)\.", "some"),
    (r"At least one (\w+) is a (\w+)\.", "some"),
    (r"No (\w+) are (\w+)\.", "no"),
    (r"No (\w+) is a (\w+)\.", "no"),
]
SYLLOGISM_QUESTIONS = [
    (r"Is every (\w+) a (\w+)\?", "all"),
    (r"Are all (\w+) (\w+)\?", "all"),
    (r"Is at least one (\w+) a (\w+)\?", "some"),
    (r"Are some (\w+) (\w+)\?", "some"),
]


def solve_syllogism(prompt: str) -> str:
    """Brute force over every small model: a model is a set of element types (the set of
    categories each element is in); #some-premises + 1 elements are enough for a
    counter-model of either the claim or its negation."""
    noun = {}
    for singular, plural in load_template("reasoning")["categories"]:
        noun[singular] = noun[plural] = singular
    premises, claim = [], None
    for sentence in sentences(prompt):
        for pattern, kind in SYLLOGISM_PREMISES + SYLLOGISM_QUESTIONS:
            if m := re.fullmatch(pattern, sentence):
                stmt = (kind, noun[m.group(1)], noun[m.group(2)])
                if sentence.endswith("?"):
                    claim = stmt
                else:
                    premises.append(stmt)
    cats = sorted({c for _, x, y in [*premises, claim] for c in (x, y)})
    types = [
        frozenset(c for c, bit in zip(cats, bits, strict=True) if bit)
        for bits in itertools.product((0, 1), repeat=len(cats))
    ]

    def holds(stmt, model):
        kind, x, y = stmt
        if kind == "all":
            return all(y in t for t in model if x in t)
        if kind == "no":
            return not any(x in t and y in t for t in model)
        return any(x in t and y in t for t in model)

    size = sum(kind == "some" for kind, _, _ in premises) + 1
    seen = set()
    for k in range(size + 1):
        for model in itertools.combinations(types, k):
            if all(holds(p, model) for p in premises):
                seen.add(holds(claim, model))
    return "yes" if seen == {True} else "no" if seen == {False} else "cannot tell"


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("generations", "ancestor", "word"),
    [(1, True, "parent"), (2, True, "grandparent"), (3, True, "great-grandparent"),
     (4, True, "great-great-grandparent"), (1, False, "child"), (2, False, "grandchild"),
     (5, False, "great-great-great-grandchild")],
)  # fmt: skip
def test_relation_word(generations, ancestor, word):
    assert relation_word(generations, ancestor) == word


def test_a_grandparents_grandparent_is_a_great_great_grandparent():
    prompt = (
        "Ann is Bob's grandparent. Bob is a grandparent of Cy. Fill in the blank: Ann is Cy's ____."
    )
    assert solve_kinship(prompt) == "great-great-grandparent"
    sample = {"task_type": "reasoning", "prompt": prompt, "answer": relation_word(2 + 2, True)}
    sample["verify"] = {"kind": "kinship"}
    assert score(sample, "Answer: great-great-grandparent").correct
    assert score(sample, "Answer: Great great grandparent.").correct  # same word, other spelling
    for wrong in ("great-grandparent", "grandparent", "great-great-grandchild", "parent"):
        assert not score(sample, f"Answer: {wrong}").correct


def test_exact_match_never_substring():
    sample = {"task_type": "reasoning", "prompt": "?", "answer": "great-grandparent", "verify": {}}
    assert not score(sample, "Answer: grandparent").correct
    assert not score(sample, "Answer: great-great-grandparent").correct
    sample = {**sample, "answer": "positive"}
    assert not score(sample, "Answer: not positive").correct
    sample = {**sample, "answer": "no"}
    assert not score(sample, "Answer: no, cannot tell").correct
    assert not score(sample, "Answer: cannot tell").correct


def test_last_answer_wins():
    sample = {"task_type": "reasoning", "prompt": "?", "answer": "Ada", "verify": {}}
    assert score(sample, "Answer: Ben\nOn reflection...\nAnswer: Ada").correct
    assert not score(sample, "Answer: Ada\nNo wait.\nAnswer: Ben").correct
    assert not score(sample, "Ada").correct  # no marker
    assert not score(sample, "Answer:").correct  # empty


@pytest.mark.parametrize(
    ("premises", "claim", "answer"),
    [
        ([("all", 0, 1), ("all", 1, 2)], ("all", 0, 2), "yes"),  # Barbara
        ([("all", 0, 1), ("all", 1, 2)], ("all", 2, 0), "cannot tell"),  # converse
        ([("all", 0, 1), ("no", 1, 2)], ("some", 0, 2), "no"),  # Celarent
        ([("some", 0, 1), ("all", 1, 2)], ("some", 0, 2), "yes"),  # Darii
        ([("some", 0, 1), ("some", 1, 2)], ("some", 0, 2), "cannot tell"),
        ([("some", 0, 1), ("no", 1, 2)], ("all", 0, 2), "no"),  # some 0 is not a 2
        ([("all", 0, 1), ("some", 1, 2)], ("some", 0, 2), "cannot tell"),
    ],
)
def test_settle_classic_forms(premises, claim, answer):
    assert settle(premises, claim, 3) == answer
    assert settle(premises, claim, 3, existential_import=True) == answer


def test_settle_existential_import_and_contradiction():
    # without existential import the wugs may not exist, so "some wug is a dax" is open
    assert settle([("all", 0, 1), ("all", 1, 2)], ("some", 0, 2), 3) == "cannot tell"
    assert settle([("all", 0, 1), ("all", 1, 2)], ("some", 0, 2), 3, True) == "yes"
    assert settle([("some", 0, 1), ("no", 0, 1)], ("all", 0, 1), 2) is None


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_reference_passes_and_corruption_fails(difficulty):
    rng = random.Random(0)
    for sample in samples(difficulty):
        assert sample["prompt"].endswith(ANSWER_INSTRUCTION)
        assert isinstance(sample["answer"], str) and sample["answer"]
        assert TASK.check_verify(sample["verify"]) is None
        canonical_json(sample["verify"])  # serialisable
        good = score(sample, TASK.format_reference(sample))
        assert good.correct and good.reward == 1.0
        assert score(sample, f"Thinking...\nAnswer: {sample['answer']}").reward == 1.0
        choices = sample["verify"]["choices"]
        assert sample["answer"] in choices
        other = rng.choice([c for c in choices if normalize_answer(c) != sample["answer"].lower()])
        assert score(sample, f"Answer: {other}").reward == -1.0
        assert score(sample, f"Answer: not {sample['answer']}").reward == -1.0
        assert not score(sample, "Answer:").correct
        assert not score(sample, sample["answer"]).correct  # no "Answer:" marker


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_answers_agree_with_independent_solvers(difficulty):
    kinds = {"ordering": 0, "kinship": 0, "boolean": 0, "syllogism": 0}
    for sample in samples(difficulty):
        kind = sample["verify"]["kind"]
        kinds[kind] += 1
        if kind == "ordering":
            assert solve_ordering(sample["prompt"]) == sample["answer"], sample["prompt"]
        elif kind == "kinship":
            assert solve_kinship(sample["prompt"]) == sample["answer"], sample["prompt"]
        elif kind == "boolean":
            assert solve_boolean(sample) == sample["answer"], sample["prompt"]
        elif difficulty != "hard" and kinds[kind] <= 150:  # brute force: small cases only
            assert solve_syllogism(sample["prompt"]) == sample["answer"], sample["prompt"]
    assert min(kinds.values()) > N // 8  # every kind is drawn


def test_difficulty_sets_size():
    def people(sample):  # n people are linked by n - 1 facts
        return len(re.findall(r" than \w+\.", sample["prompt"])) + 1

    easy = [s for s in samples("easy") if s["verify"]["kind"] == "ordering"]
    hard = [s for s in samples("hard") if s["verify"]["kind"] == "ordering"]
    assert max(people(s) for s in easy) == 3 and min(people(s) for s in hard) >= 6
    kin = {d: {s["answer"] for s in samples(d) if s["verify"]["kind"] == "kinship"} for d in
           ("easy", "hard")}  # fmt: skip
    assert kin["easy"] == {"parent", "child", "grandparent", "grandchild"}
    assert "great-great-great-great-grandparent" in kin["hard"]


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_variety(difficulty):
    distinct = len({TASK.dedupe_key(s) for s in samples(difficulty)})
    print(f"reasoning {difficulty}: {distinct} distinct of {N}")
    assert distinct >= 0.95 * N


def test_dedupe_key_ignores_phrasing():
    a, b = dict(samples("medium")[0]), dict(samples("medium")[0])
    b["prompt"] = b["prompt"].upper()
    assert TASK.dedupe_key(a) == TASK.dedupe_key(b)
    user = {"prompt": "Is it  raining?", "verify": {}}
    assert TASK.dedupe_key(user) == "is it raining?"


def test_check_verify():
    assert TASK.check_verify({}) is None
    assert TASK.check_verify({"kind": "kinship", "choices": ["parent", "child"]}) is None
    assert TASK.check_verify({"choices": "parent"})
    assert TASK.check_verify({"choices": [1, 2]})
