"""Number puzzles with many correct answers: a whole number in a range with a property.

"Write a whole number from 36 to 58 that is a multiple of 4" has six correct answers; the
verifier checks the answer's properties instead of matching one reference. The reference
answer is one correct answer drawn at random, as a dataset collected from people holds one
of many; so the references show *what* is asked but not which answers the model can get
right reliably. Supervised learning copies their spread (and, at temperature 1.0, the
model's mistakes around it); the reward checks every answer, which is what RL can use.

- easy: a multiple of 2-5;
- medium: a multiple of 3-12;
- hard: an odd or an even multiple of 3-9.

Ranges lie within 10..135 and always hold at least three correct answers. An answer is
correct iff it is a whole number written in decimal (no sign, no leading zero) within
[low, high] with the property.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

from dapo_cli.tasks.base import ANSWER_INSTRUCTION, Score, Task, extract_answer
from dapo_cli.tasks.templates import load_template

_WHOLE = re.compile(r"^(0|[1-9]\d*)$")
_DIVISORS = {"easy": (2, 5), "medium": (3, 12), "hard": (3, 9)}


def violation(verify: Mapping[str, Any], x: int) -> str | None:
    """Why ``x`` does not solve the puzzle ``verify`` describes; None when it does."""
    if not verify["low"] <= x <= verify["high"]:
        return f"outside {verify['low']}..{verify['high']}"
    if x % verify["multiple"]:
        return f"not a multiple of {verify['multiple']}"
    parity = verify.get("parity")
    if parity and x % 2 != (parity == "odd"):
        return f"not {parity}"
    return None


def solutions(verify: Mapping[str, Any]) -> list[int]:
    """Every correct answer to the puzzle ``verify`` describes, smallest first."""
    return [x for x in range(verify["low"], verify["high"] + 1) if violation(verify, x) is None]


def parse_whole(text: str) -> int | None:
    """``"56"`` or ``"56."`` -> 56; None for anything else (signs, leading zeros, words)."""
    text = text.strip().rstrip(".").strip()
    return int(text) if _WHOLE.match(text) else None


class PuzzleTask(Task):
    name = "puzzle"
    description = "a whole number in a range with a property (many correct answers)"

    def generate(self, rng: random.Random, difficulty: str) -> dict[str, Any]:
        data = load_template("puzzle")
        while True:
            d = rng.randint(*_DIVISORS[difficulty])
            parity = rng.choice(("odd", "even")) if difficulty == "hard" else None
            step = 2 * d if parity else d  # the spacing of correct answers
            low = rng.randint(10, 60)
            high = rng.randint(low + 3 * step, 99 + 3 * step)
            verify = {"multiple": d, "low": low, "high": high, "parity": parity}
            found = solutions(verify)
            if len(found) >= 3:
                break
        what = f"{parity} multiple of {d}" if parity else f"multiple of {d}"
        article = "an" if what[0] in "aeiou" else "a"
        phrasing = rng.choice(data["phrasings"]).format(
            low=low, high=high, what=what, article=article
        )
        return {
            "prompt": f"{phrasing} {ANSWER_INSTRUCTION}",
            "answer": str(rng.choice(found)),
            "verify": verify,
        }

    def check_verify(self, verify: Mapping[str, Any]) -> str | None:
        missing = [key for key in ("multiple", "low", "high") if key not in verify]
        if missing:
            return f"verify lacks {', '.join(missing)}"
        if verify.get("parity") not in (None, "odd", "even"):
            return "verify parity must be odd, even or empty"
        return None

    def dedupe_key(self, sample: Mapping[str, Any]) -> str:
        v = sample["verify"]
        return f"{v['multiple']}|{v['low']}|{v['high']}|{v.get('parity')}"

    def verify(self, sample: Mapping[str, Any], completion: str) -> Score:
        v = sample["verify"]
        extracted = extract_answer(completion)
        if extracted is None:
            return Score.binary(False, extracted=None, reason="no 'Answer:' found")
        x = parse_whole(extracted)
        reason = "not a whole number" if x is None else violation(v, x)
        if reason is None:
            return Score.binary(True, extracted=extracted)
        return Score.binary(False, extracted=extracted, reason=reason)
