"""What every task shares: the score object and the scoring options, answer extraction and
normalisation, and the ``Task`` interface (a generator of verifiable samples plus the
verifier that checks them).

A sample is a plain dict::

    {"id", "task_type", "prompt", "answer", "verify", "difficulty", "split"}

``answer`` is always a string (the reference); ``verify`` is a dict holding whatever the
task's verifier needs beyond the answer (test cases, label set, constraints).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

ANSWER_INSTRUCTION = "Give your final answer after 'Answer:'."
DIFFICULTIES = ("easy", "medium", "hard")

# The last "Answer:" wins (Minerva style); the marker is matched case-insensitively.
ANSWER_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
# At most three exponent digits, and no longer number is normalised: int() takes minutes to
# write out "1e999999", and str() refuses an int of more than 4300 digits.
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")
_MAX_NUMBER_CHARS = 100
# Decoration a model may put around an answer that never changes its meaning.
_WRAPPERS = ("**", "__", "`", '"', "'", "$")


@dataclass(frozen=True)
class Score:
    """The verdict on one completion.

    ``reward`` is what the policy gradient sees (+1 correct / -1 incorrect, DAPO Eq. 7;
    graded tasks may return values in [-1, 1]); ``correct`` is what dynamic sampling and
    accuracy metrics use; ``details`` is for logging and inspection.
    """

    reward: float
    correct: bool
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def binary(cls, correct: bool, **details: Any) -> Score:
        return cls(1.0 if correct else -1.0, bool(correct), details)


@dataclass(frozen=True)
class Scoring:
    """How responses are read and rewarded beyond each task's verifier (``rewards.score``):
    ``reward.last_number`` and ``reward.format_reward`` of a training run (their meaning is
    documented there, in dapo_cli/config.py), the same for ``dapo eval``. These defaults (both
    off) are those settings' defaults."""

    last_number: bool = False
    format_reward: float = 0.0


def extract_answer(completion: str) -> str | None:
    """The text after the **last** ``Answer:`` up to the end of that line, or None.

    An empty answer (``"Answer:"`` with nothing after it on the line) is None too.
    """
    matches = list(ANSWER_MARKER.finditer(completion))
    if not matches:
        return None
    rest = completion[matches[-1].end() :].strip()
    line = rest.split("\n", 1)[0].strip()
    return line or None


def normalize_answer(text: str) -> str:
    """Canonical form for exact comparison: trimmed, whitespace collapsed, lower case,
    decoration and a trailing full stop removed, numbers in one spelling
    (``1,000`` -> ``1000``, ``7.0`` -> ``7``, ``+5`` -> ``5``)."""
    s = " ".join(text.split()).strip()
    changed = True
    while changed and s:
        changed = False
        if s.endswith(".") and not _NUMBER.match(s):
            s, changed = s[:-1].rstrip(), True
        for w in _WRAPPERS:
            if len(s) >= 2 * len(w) and s.startswith(w) and s.endswith(w):
                s, changed = s[len(w) : -len(w)].strip(), True
    s = s.lower()
    return _normalize_number(s)


def _normalize_number(s: str) -> str:
    candidate = s.replace(",", "") if _THOUSANDS.match(s) else s
    if len(candidate) > _MAX_NUMBER_CHARS or not _NUMBER.match(candidate):
        return s
    try:
        value = Decimal(candidate)
    except InvalidOperation:
        return s
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def exact_match(completion: str, reference: str) -> Score:
    """+1 iff the extracted answer equals the reference after normalisation (never substring)."""
    extracted = extract_answer(completion)
    if extracted is None:
        return Score.binary(False, extracted=None, reason="no 'Answer:' found")
    ok = normalize_answer(extracted) == normalize_answer(reference)
    return Score.binary(ok, extracted=extracted)


def normalize_prompt(prompt: str) -> str:
    """The form used to deduplicate prompts (case and spacing do not make a new prompt)."""
    return " ".join(prompt.lower().split())


def sample_id(task_type: str, prompt: str) -> str:
    """Stable content hash of a sample: the same task and prompt always get the same id."""
    digest = hashlib.sha256(f"{task_type}\n{normalize_prompt(prompt)}".encode()).hexdigest()
    return digest[:16]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Task(ABC):
    """A task type: generates verifiable samples and verifies completions.

    Subclasses set ``name`` and implement :meth:`generate` and :meth:`verify`. ``generate``
    must be a pure function of ``rng`` and ``difficulty`` (same seed, same sample), and the
    reference answer it returns, written as a model would (``"... Answer: <answer>"``),
    must pass :meth:`verify`.
    """

    name: str = ""
    description: str = ""
    runs_code: bool = False  # its verifier runs model-written code (so needs the sandbox)

    @abstractmethod
    def generate(self, rng: random.Random, difficulty: str) -> dict[str, Any]:
        """Return ``{"prompt", "answer", "verify"}`` for one sample of this difficulty."""

    @abstractmethod
    def verify(self, sample: Mapping[str, Any], completion: str) -> Score:
        """Score ``completion`` against ``sample`` (which has ``answer`` and ``verify``)."""

    def verify_with(
        self, sample: Mapping[str, Any], completion: str, *, last_number: bool
    ) -> Score:
        """:meth:`verify` under a run's answer-reading options: ``last_number`` (take the last
        number of a completion without ``Answer:`` or ``\\boxed{}``, ``reward.last_number``).
        Tasks whose answers are not numbers ignore it, as here."""
        return self.verify(sample, completion)

    def check_verify(self, verify: Mapping[str, Any]) -> str | None:
        """Return a problem description if ``verify`` lacks what :meth:`verify` needs."""
        return None

    def dedupe_key(self, sample: Mapping[str, Any]) -> str:
        """Two samples with the same key are the same problem (they never appear twice, and
        never in both splits). Default: the normalised prompt; override when the same problem
        can be phrased in several ways."""
        return normalize_prompt(sample["prompt"])

    def format_reference(self, sample: Mapping[str, Any]) -> str:
        """The reference answer written the way a model is asked to write it."""
        return f"Answer: {sample['answer']}"
