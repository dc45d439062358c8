"""Integer arithmetic with exactly one answer.

Difficulty sets the size of the numbers and the number of operations:
easy = a sum or difference of two one-digit numbers; medium = a sum or difference of two
numbers up to two digits; hard = two to four operations on numbers up to three digits,
products and parentheses included. The answer is computed by integer arithmetic, so it is
exact; division is never used, so every answer is an integer.

The verifier reads answers as :mod:`dapo_cli.tasks.answers` does for every maths dataset
(GSM8K, MATH, DAPO-Math-17k map to this task type): the last ``Answer:`` line or
``\\boxed{}`` (or, with ``reward.last_number``, the last number), equal to the reference as
a number or, for a LaTeX reference, symbolically.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from dapo_cli.tasks.answers import math_match
from dapo_cli.tasks.base import ANSWER_INSTRUCTION, Score, Task
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


def evaluate_expression(expr: str, steps: list[str] | None = None) -> int:
    """Evaluate an expression of integers, + - * and parentheses (no eval of arbitrary code).
    With ``steps``, each operation is appended to it as ``a op b = c`` in evaluation order."""
    tokens = expr.replace("(", " ( ").replace(")", " ) ").split()
    pos = 0

    def apply(lhs: int, op: str, rhs: int) -> int:
        value = {"+": lhs + rhs, "-": lhs - rhs, "*": lhs * rhs}[op]
        if steps is not None:
            steps.append(f"{lhs} {op} {rhs} = {value}")
        return value

    def parse_sum() -> int:
        nonlocal pos
        value = parse_product()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            value = apply(value, op, parse_product())
        return value

    def parse_product() -> int:
        nonlocal pos
        value = parse_atom()
        while pos < len(tokens) and tokens[pos] == "*":
            pos += 1
            value = apply(value, "*", parse_atom())
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


def _column_steps(a: int, op: str, b: int) -> tuple[str, int]:
    """Digit-by-digit working for a ± b with 0 <= a, b <= 99, ones column first."""
    if op == "-" and a < b:
        steps, value = _column_steps(b, "-", a)
        return f"{a} - {b} = -({b} - {a}): {steps.split(': ', 1)[1]}", -value
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    if op == "+":
        carry, ones = divmod(a0 + b0, 10)
        first = f"{a0} + {b0} = {a0 + b0}" + (", carry 1" if carry else "")
        tens = a1 + b1 + carry
        second = f"{a1} + {b1}" + (" + 1" if carry else "") + f" = {tens}"
    else:
        borrow = int(a0 < b0)
        ones = a0 + 10 * borrow - b0
        first = f"{a0 + 10 * borrow} - {b0} = {ones}" + (", borrow 1" if borrow else "")
        tens = a1 - b1 - borrow
        second = f"{a1} - {b1}" + (" - 1" if borrow else "") + f" = {tens}"
    return f"{a} {op} {b}: {first}; {second}", tens * 10 + ones


def worked_solution(expr: str) -> str:
    """The reference working for ``expr``, ending in ``Answer: <value>``.

    A ± b on numbers up to two digits is worked column by column (ones, then tens, with the
    carry or borrow written out); longer expressions are worked one operation at a time in
    evaluation order, as :func:`evaluate_expression` records them; the column working is
    checked against its value.
    """
    steps: list[str] = []
    value = evaluate_expression(expr, steps)
    tokens = expr.split()
    if len(tokens) == 3 and "(" not in expr and tokens[1] in "+-":
        a, op, b = int(tokens[0]), tokens[1], int(tokens[2])
        if max(a, b) <= 9:
            return f"{expr} = {value}. Answer: {value}"
        if max(a, b) <= 99:
            text, got = _column_steps(a, op, b)
            assert got == value, (expr, got, value)
            return f"{text}. Answer: {value}"
    return "; ".join(steps) + f". Answer: {value}"


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
        return math_match(completion, str(sample["answer"]))  # no last-number fallback

    def verify_with(
        self, sample: Mapping[str, Any], completion: str, *, last_number: bool
    ) -> Score:
        return math_match(completion, str(sample["answer"]), last_number)

    def format_reference(self, sample: Mapping[str, Any]) -> str:
        return worked_solution(sample["verify"]["expression"])
