"""Short creative writing (poem, story, description) with checkable constraints.

Each sample asks for a piece on a theme that uses 2–4 required words (whole words, any
case), has a word count in a range (the title line not counted) and, for some samples,
opens with a ``Title: ...`` line. The piece is everything after the last ``Answer:``, over
as many lines as it takes. The reward is graded: ``-1 + 2 * (constraints met / constraints)``
(each required word, the word count and the title are one constraint each); the sample is
correct only when all are met. The reference is a piece assembled from the theme's word
list and the form's line templates in ``templates/tasks/creative.json``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

from dapo_cli.tasks.base import ANSWER_INSTRUCTION, ANSWER_MARKER, Score, Task
from dapo_cli.tasks.templates import load_template

# (required words, smallest lower bound, largest lower bound, range width, chance of a title)
_LEVELS = {
    "easy": (2, 20, 50, 60, 0.25),
    "medium": (3, 40, 80, 40, 0.5),
    "hard": (4, 50, 90, 25, 1.0),
}
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
_TITLE = re.compile(r"^[#*_\s]*title\s*:\s*\S", re.IGNORECASE)


def extract_piece(completion: str) -> str | None:
    """Everything after the last ``Answer:`` (all lines), stripped; None without a marker."""
    markers = list(ANSWER_MARKER.finditer(completion))
    return completion[markers[-1].end() :].strip() if markers else None


def split_title(piece: str) -> tuple[str | None, str]:
    """``(title line or None, body)``: a first line ``Title: ...`` is the title."""
    first, _, rest = piece.strip().partition("\n")
    return (first.strip(), rest) if _TITLE.match(first) else (None, piece)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def has_word(text: str, word: str) -> bool:
    """``word`` as a whole word, any case (``wave`` is not found in ``waves``)."""
    pattern = rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])"
    return re.search(pattern, text, re.IGNORECASE) is not None


def _compose(
    rng: random.Random, lines: list[str], words: list[str], required: list[str], low: int, high: int
) -> list[str]:
    """Lines using each required word once, then filler lines until the count is in range."""
    order = rng.sample(lines, len(lines))
    out = [order.pop().format(w=word) for word in required]
    count = sum(count_words(line) for line in out)
    while count < low:
        if not order:
            order = rng.sample(lines, len(lines))
        line = order.pop().format(w=rng.choice(words))
        if count + count_words(line) <= high:  # always true while lines are shorter than the range
            out.append(line)
            count += count_words(line)
    rng.shuffle(out)
    return [line[0].upper() + line[1:] for line in out]


class CreativeTask(Task):
    name = "creative"
    description = "a short poem, story or description meeting word, length and title constraints"

    def generate(self, rng: random.Random, difficulty: str) -> dict[str, Any]:
        data = load_template("creative")
        n_words, lo_min, lo_max, width, title_chance = _LEVELS[difficulty]
        form = rng.choice(sorted(data["forms"]))
        theme = rng.choice(sorted(data["themes"]))
        words = data["themes"][theme]["words"]
        required = rng.sample(words, n_words)
        low = rng.randrange(lo_min, lo_max + 1, 5)
        high = low + width
        title = rng.random() < title_chance
        spec = data["forms"][form]
        body = spec["joiner"].join(_compose(rng, spec["lines"], words, required, low, high))
        piece = body
        if title:
            heading = rng.choice(data["titles"]).format(W=rng.choice(words).title())
            piece = f"Title: {heading}\n{body}"
        ins = data["instructions"]
        parts = [
            rng.choice(data["requests"]).format(form=form, theme=data["themes"][theme]["phrase"]),
            ins["words"].format(words=", ".join(required)),
            ins["length"].format(min=low, max=high),
            *([ins["title"]] if title else []),
            ins["layout"],
            ANSWER_INSTRUCTION,
        ]
        verify = {
            "required_words": required,
            "min_words": low,
            "max_words": high,
            "title": title,
            "form": form,
            "theme": theme,
        }
        return {"prompt": " ".join(parts), "answer": piece, "verify": verify}

    def format_reference(self, sample: Mapping[str, Any]) -> str:
        return f"Answer:\n{sample['answer']}"

    def dedupe_key(self, sample: Mapping[str, Any]) -> str:
        # the same form, theme and constraints asked in other words are the same problem
        v = sample.get("verify") or {}
        if not (isinstance(v.get("form"), str) and isinstance(v.get("theme"), str)):
            return super().dedupe_key(sample)
        words = ",".join(sorted(str(w).lower() for w in v.get("required_words", [])))
        limits = f"{v.get('min_words')}-{v.get('max_words')}|title={bool(v.get('title'))}"
        return f"{v['form']}|{v['theme']}|{words}|{limits}"

    def check_verify(self, verify: Mapping[str, Any]) -> str | None:
        keys = ("required_words", "min_words", "max_words", "title")
        if not any(k in verify for k in keys):
            return f"needs at least one constraint: {', '.join(keys)}"
        words = verify.get("required_words", [])
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            return "'required_words' must be a list of non-empty strings"
        for k in ("min_words", "max_words"):
            value = verify.get(k)
            if value is not None and (type(value) is not int or value < 0):
                return f"'{k}' must be a non-negative integer"
        if verify.get("max_words") is not None and verify.get("min_words", 0) > verify["max_words"]:
            return "'min_words' is larger than 'max_words'"
        if not isinstance(verify.get("title", False), bool):
            return "'title' must be true or false"
        return None

    def verify(self, sample: Mapping[str, Any], completion: str) -> Score:
        piece = extract_piece(completion)
        if not piece:
            reason = "no 'Answer:' found" if piece is None else "empty piece"
            return Score.binary(False, reason=reason)
        v = sample["verify"]
        title, body = split_title(piece)
        n = count_words(body)
        low, high = v.get("min_words") or 0, v.get("max_words")
        checks = {f"required word {w!r}": has_word(piece, w) for w in v.get("required_words", [])}
        if low or high is not None:
            bounds = f"[{low}, {high if high is not None else '∞'}]"
            checks[f"word count {n} in {bounds}"] = low <= n and (high is None or n <= high)
        if v.get("title"):
            checks["first line 'Title: ...'"] = title is not None
        failed = [name for name, ok in checks.items() if not ok]
        met = len(checks) - len(failed)
        reward = -1.0 + 2.0 * met / len(checks) if checks else 1.0
        return Score(reward, not failed, {"failed": failed, "met": met, "word_count": n})
