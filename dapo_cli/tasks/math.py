"""Integer arithmetic with exactly one answer.

Difficulty sets the size of the numbers and the number of operations:
easy = a sum or difference of two one-digit numbers; medium = a sum or difference of two
numbers up to two digits; hard = two to four operations on numbers up to three digits,
products and parentheses included. The answer is computed by integer arithmetic, so it is
exact; division is never used, so every answer is an integer.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from dapo_cli.tasks.base import ANSWER_INSTRUCTION, Score, Task, exact_match
from dapo_cli.tasks.templates import load_template

# (number of operations, largest operand, operators allowed)
_LEVELS = {
    "easy": ((1, 1), 9, "+-"),
    "medium": ((1, 1), 99, "+-"),
    "hard": ((2, 4), 999, "+-*"),
}


def _expression(rng: random.Random, difficulty: str) -> str:
    (lo, hi), largest, ops = _LEVELS[difficulty]
    n_ops = rng.randint(lo, hi)
    expr = str(rng.randint(0 if difficulty == "easy" else 1, largest))
    for _ in range(n_ops):
        op = rng.choice(ops)
        # keep products readable: the factor of a product stays small
        operand = (
            rng.randint(2, 12)
            if op == "*"
            else rng.randint(0 if difficulty == "easy" else 1, largest)
        )
        if difficulty == "hard" and " " in expr and rng.random() < 0.4:
            expr = f"({expr})"
        expr = f"{expr} {op} {operand}"
    return expr


def evaluate_expression(expr: str) -> int:
    """Evaluate an expression of integers, + - * and parentheses (no eval of arbitrary code)."""
    tokens = expr.replace("(", " ( ").replace(")", " ) ").split()
    pos = 0

    def parse_sum() -> int:
        nonlocal pos
        value = parse_product()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            rhs = parse_product()
            value = value + rhs if op == "+" else value - rhs
        return value

    def parse_product() -> int:
        nonlocal pos
        value = parse_atom()
        while pos < len(tokens) and tokens[pos] == "*":
            pos += 1
            value *= parse_atom()
        return value

    def parse_atom() -> int:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            value = parse_sum()
            pos += 1  # ")"
            return value
        return int(tok)

    result = parse_sum()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens in {expr!r}")
    return result


class MathTask(Task):
    name = "math"
    description = "integer arithmetic (+, -, *, parentheses) with one exact answer"

    def generate(self, rng: random.Random, difficulty: str) -> dict[str, Any]:
        expr = _expression(rng, difficulty)
        phrasing = rng.choice(load_template("math")["phrasings"])
        prompt = f"{phrasing.format(expr=expr)} {ANSWER_INSTRUCTION}"
        return {
            "prompt": prompt,
            "answer": str(evaluate_expression(expr)),
            "verify": {"expression": expr},
        }

    def dedupe_key(self, sample: Mapping[str, Any]) -> str:
        # the same expression in another phrasing is the same problem
        return "".join(sample["verify"]["expression"].split())

    def verify(self, sample: Mapping[str, Any], completion: str) -> Score:
        return exact_match(completion, str(sample["answer"]))
