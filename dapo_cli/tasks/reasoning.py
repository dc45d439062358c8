"""Logic puzzles whose one answer the generator computes: orderings, kinship, boolean
expressions and syllogisms (one kind drawn per sample).

- ordering: a random total order stated as shuffled adjacent facts; who is first, last or
  second, or "is X taller than Y?" (yes/no).
- kinship: a chain of ancestor facts, each spanning one to three generations; the relation
  word follows from the summed generation count (a grandparent's grandparent is four
  generations up: a great-great-grandparent).
- boolean: a parenthesised and/or/not expression over named truth values (true/false).
- syllogism: "All/Some/No X are Y" premises; yes/no/cannot tell, decided by a model checker
  and kept only when the answer is the same with and without existential import.

Difficulty sets the number of people, generations, variables and premises. Names and nouns
come from ``templates/tasks/reasoning.json``. The verifier is exact match after
normalisation (``great grandparent`` and ``great-grandparent`` are the same answer).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Mapping
from typing import Any

from dapo_cli.tasks.base import ANSWER_INSTRUCTION, Score, Task, extract_answer, normalize_answer
from dapo_cli.tasks.templates import load_template

KINDS = ("ordering", "kinship", "boolean", "syllogism")
_ORDER_PEOPLE = {"easy": (3, 3), "medium": (4, 5), "hard": (6, 7)}
# (people in the chain, most generations one fact spans, most generations asked about)
_KINSHIP = {"easy": ((3, 3), 1, 2), "medium": ((3, 4), 2, 4), "hard": ((4, 5), 3, 6)}
_BOOLEAN = {"easy": ((2, 2), (1, 2)), "medium": ((3, 3), (2, 3)), "hard": ((4, 5), (4, 6))}
_PREMISES = {"easy": (2, 2), "medium": (3, 3), "hard": (4, 5)}
_HYPHEN_IN_WORD = re.compile(r"(?<=[a-z])-(?=[a-z])")


def relation_word(generations: int, ancestor: bool) -> str:
    """``parent``/``child`` for one generation, ``grand…`` for two, one more ``great-`` for
    each generation beyond that (4 up is ``great-great-grandparent``)."""
    if generations < 1:
        raise ValueError("a relation spans at least one generation")
    base = "parent" if ancestor else "child"
    return base if generations == 1 else "great-" * (generations - 2) + "grand" + base


def _canonical_answer(text: str) -> str:
    return _HYPHEN_IN_WORD.sub(" ", normalize_answer(text))


def _ordering(rng: random.Random, level: str, data: dict[str, Any]) -> dict[str, Any]:
    people = rng.sample(data["names"], rng.randint(*_ORDER_PEOPLE[level]))  # first = the most
    cmp = rng.choice(data["comparisons"])
    facts = []
    for k in range(len(people) - 1):
        a, b = people[k], people[k + 1]
        flip = level != "easy" and rng.random() < 0.5
        facts.append(
            f"{b} is {cmp['less']} than {a}." if flip else f"{a} is {cmp['more']} than {b}."
        )
    rng.shuffle(facts)
    asks = ["most", "least", "compare", "compare"] + (["second"] if level == "hard" else [])
    ask = rng.choice(asks)
    template = rng.choice(data["ordering_questions"][ask])
    if ask == "compare":
        i, j = rng.sample(range(len(people)), 2)
        while level != "easy" and abs(i - j) < 2:  # make the question need transitivity
            i, j = rng.sample(range(len(people)), 2)
        word = rng.choice(("more", "less"))
        question = template.format(x=people[i], y=people[j], word=cmp[word])
        answer = "yes" if (i < j) == (word == "more") else "no"
        claim = (i, j) if word == "more" else (j, i)  # "X shorter than Y" = "Y taller than X"
        ask = f"is {people[claim[0]]}>{people[claim[1]]}"
        choices, note = ["yes", "no"], data["ordering_notes"]["yes_no"]
    else:
        answer = {"most": people[0], "least": people[-1], "second": people[1]}[ask]
        question = template.format(most=cmp["most"], least=cmp["least"])
        choices, note = sorted(people), data["ordering_notes"]["name"]
    return {
        "text": f"{' '.join(facts)} {question} {note}",
        "answer": answer,
        "choices": choices,
        "canonical": f"ordering|{cmp['more']}|{'>'.join(people)}|{ask}",
    }


def _kinship(rng: random.Random, level: str, data: dict[str, Any]) -> dict[str, Any]:
    sizes, span, cap = _KINSHIP[level]
    people = rng.sample(data["names"], rng.randint(*sizes))  # first = the oldest
    gens = [rng.randint(1, span) for _ in people[1:]]
    while sum(gens) > cap:
        gens = [rng.randint(1, span) for _ in people[1:]]
    facts = []
    for k, g in enumerate(gens):
        a, b, template = people[k], people[k + 1], rng.choice(data["kinship_facts"])
        if rng.random() < 0.5:
            facts.append(template.format(a=a, b=b, rel=relation_word(g, True)))
        else:
            facts.append(template.format(a=b, b=a, rel=relation_word(g, False)))
    rng.shuffle(facts)
    pairs = [(i, j) for i in range(len(people)) for j in range(i + 1, len(people))]
    far = [(i, j) for i, j in pairs if j - i >= 2]
    i, j = rng.choice(far if rng.random() < 0.75 else pairs)
    ancestor = rng.random() < 0.5
    x, y = (people[i], people[j]) if ancestor else (people[j], people[i])
    question = rng.choice(data["kinship_questions"]).format(x=x, y=y)
    chain = "".join(f"{people[k]}>{g}>" for k, g in enumerate(gens)) + people[-1]
    return {
        "text": f"{' '.join(facts)} {question} {data['kinship_note']}",
        "answer": relation_word(sum(gens[i:j]), ancestor),
        "choices": [relation_word(d, up) for up in (True, False) for d in range(1, cap + 1)],
        "canonical": f"kinship|{chain}|{x}|{y}",
    }


def _bool_tree(rng: random.Random, leaves: list[str], n_ops: int) -> tuple:
    """A random and/or tree over ``leaves`` (consumed left to right), some nodes negated."""
    if n_ops == 0:
        node: tuple = ("var", leaves.pop())
    else:
        left = rng.randint(0, n_ops - 1)
        op = rng.choice(("and", "or"))
        node = (op, _bool_tree(rng, leaves, left), _bool_tree(rng, leaves, n_ops - 1 - left))
    return ("not", node) if rng.random() < 0.25 else node


def _render(node: tuple, nested: bool = False) -> str:
    if node[0] == "var":
        return node[1]
    if node[0] == "not":
        return f"not {_render(node[1], nested=True)}"
    text = f"{_render(node[1], True)} {node[0]} {_render(node[2], True)}"
    return f"({text})" if nested else text


def _evaluate(node: tuple, values: Mapping[str, bool]) -> bool:
    if node[0] == "var":
        return values[node[1]]
    if node[0] == "not":
        return not _evaluate(node[1], values)
    left, right = _evaluate(node[1], values), _evaluate(node[2], values)
    return (left and right) if node[0] == "and" else (left or right)


def _boolean(rng: random.Random, level: str, data: dict[str, Any]) -> dict[str, Any]:
    n_vars, n_ops = _BOOLEAN[level]
    names = sorted(rng.sample(data["boolean_variables"], rng.randint(*n_vars)))
    values = {name: rng.random() < 0.5 for name in names}
    n = rng.randint(*n_ops)
    leaves = names + [rng.choice(names) for _ in range(n + 1 - len(names))]  # each name used
    rng.shuffle(leaves)
    tree = _bool_tree(rng, leaves, n)
    expr = _render(tree)
    assignments = ", ".join(f"{name} = {str(v).lower()}" for name, v in values.items())
    question = rng.choice(data["boolean_questions"]).format(assignments=assignments, expr=expr)
    return {
        "text": f"{question} {data['boolean_note']}",
        "answer": str(_evaluate(tree, values)).lower(),
        "choices": ["true", "false"],
        "canonical": f"boolean|{assignments}|{expr}",
    }


def settle(
    premises: list[tuple[str, int, int]],
    claim: tuple[str, int, int],
    n: int,
    existential_import: bool = False,
) -> str | None:
    """Whether ``premises`` settle ``claim``: yes (entailed), no (its negation is entailed) or
    cannot tell; None if the premises contradict each other.

    Statements are ``(kind, x, y)`` over categories ``0..n-1`` with kind all/some/no. A model
    is a set of element types (the categories an element belongs to): the universal premises
    say which types may exist, each "some" premise needs one of its witness types to exist.
    With ``existential_import`` every category is taken to be non-empty.
    """
    rules = list(premises) + ([("some", c, c) for c in range(n)] if existential_import else [])

    def member(t: int, c: int) -> bool:
        return bool(t >> c & 1)

    def allowed(t: int) -> bool:
        return not any(
            member(t, x) and member(t, y) == (kind == "no")
            for kind, x, y in rules
            if kind != "some"
        )

    types = [t for t in range(1 << n) if allowed(t)]
    witnesses = [
        [t for t in types if member(t, x) and member(t, y)] for k, x, y in rules if k == "some"
    ]
    if not all(witnesses):
        return None
    kind, x, y = claim

    def hit(t: int) -> bool:  # "all": an x that is not a y; "some": an x that is a y
        return member(t, x) and member(t, y) == (kind == "some")

    forced = any(all(hit(t) for t in w) for w in witnesses)  # every model has a hit
    possible = any(hit(t) for t in types)  # some model has one
    true, false = (not possible, forced) if kind == "all" else (forced, not possible)
    return "yes" if true else "no" if false else "cannot tell"


def _syllogism(rng: random.Random, level: str, data: dict[str, Any]) -> dict[str, Any]:
    n_premises = rng.randint(*_PREMISES[level])
    target = rng.choice(("yes", "no", "cannot tell"))
    for attempt in itertools.count():
        premises: list[tuple[str, int, int]] = []
        for i in range(n_premises):
            kind = rng.choices(("all", "some", "no"), weights=(6, 2, 2))[0]
            if kind == "no" and any(p[0] == "no" for p in premises):
                kind = "all"
            premises.append((kind, i, i + 1) if rng.random() < 0.8 else (kind, i + 1, i))
        claim = (rng.choice(("all", "some")), *rng.sample(range(n_premises + 1), 2))
        answer = settle(premises, claim, n_premises + 1)
        if answer is None or answer != settle(premises, claim, n_premises + 1, True):
            continue  # contradictory, or the answer depends on existential import
        if answer == target or attempt >= 50:
            break
    cats = rng.sample(data["categories"], n_premises + 1)

    def say(template: str, x: int, y: int) -> str:
        return template.format(x=cats[x][0], xs=cats[x][1], y=cats[y][0], ys=cats[y][1])

    lines = []
    for kind, x, y in premises:
        if kind != "all" and rng.random() < 0.5:  # "some" and "no" are symmetric
            x, y = y, x
        lines.append(say(rng.choice(data["syllogism_premises"][kind]), x, y))
    rng.shuffle(lines)
    question = say(rng.choice(data["syllogism_questions"][claim[0]]), claim[1], claim[2])

    def key(kind: str, x: int, y: int) -> str:
        x, y = (x, y) if kind == "all" else sorted((x, y))
        return f"{kind} {cats[x][0]} {cats[y][0]}"

    facts = ";".join(sorted(key(*p) for p in premises))
    return {
        "text": f"{' '.join(lines)} {question} {data['syllogism_note']}",
        "answer": answer,
        "choices": ["yes", "no", "cannot tell"],
        "canonical": f"syllogism|{facts}|{claim[0]} {cats[claim[1]][0]} {cats[claim[2]][0]}",
    }


_BUILDERS = {
    "ordering": _ordering,
    "kinship": _kinship,
    "boolean": _boolean,
    "syllogism": _syllogism,
}


class ReasoningTask(Task):
    name = "reasoning"
    description = "logic puzzles (orderings, kinship, boolean values, syllogisms) with one answer"

    def generate(self, rng: random.Random, difficulty: str) -> dict[str, Any]:
        kind = rng.choice(KINDS)
        puzzle = _BUILDERS[kind](rng, difficulty, load_template("reasoning"))
        verify = {"kind": kind, "choices": puzzle["choices"], "canonical": puzzle["canonical"]}
        prompt = f"{puzzle['text']} {ANSWER_INSTRUCTION}"
        return {"prompt": prompt, "answer": puzzle["answer"], "verify": verify}

    def dedupe_key(self, sample: Mapping[str, Any]) -> str:
        # the same facts shuffled or phrased another way are the same puzzle
        canonical = (sample.get("verify") or {}).get("canonical")
        return canonical if isinstance(canonical, str) else super().dedupe_key(sample)

    def check_verify(self, verify: Mapping[str, Any]) -> str | None:
        choices = verify.get("choices", [])
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            return "'choices' must be a list of strings"
        if "kind" in verify and not isinstance(verify["kind"], str):
            return "'kind' must be a string"
        return None

    def verify(self, sample: Mapping[str, Any], completion: str) -> Score:
        extracted = extract_answer(completion)
        if extracted is None:
            return Score.binary(False, extracted=None, reason="no 'Answer:' found")
        ok = _canonical_answer(extracted) == _canonical_answer(str(sample["answer"]))
        return Score.binary(ok, extracted=extracted)
