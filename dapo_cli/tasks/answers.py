"""The final answer of a maths completion, and whether it equals the reference.

Extraction (:func:`final_answer`), first rule that finds something wins:

1. ``answer``: the text after the last ``Answer:`` on its line (:func:`extract_answer`);
2. ``boxed``: the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces balanced), or
   of ``\\boxed 5``; what pretrained models write;
3. ``last_number``: only when asked (``reward.last_number``), the last number of the text.

Equivalence (:func:`equivalent`): both sides lose their decoration (``$``, ``\\text{}``,
``\\left``, thin spaces, ``x =``, ``%``, degrees, units written as words), then

- equal strings are equal;
- a reference that is a number (integer, decimal, thousands separators, sign, ``a/b``,
  ``\\frac{a}{b}``) takes an answer that is the same number, compared exactly as a
  fraction (``0.50`` = ``.5`` = ``1/2`` = ``\\dfrac12``); an expression is not a number here,
  so restating the question (``47 + 38``) never earns the reward;
- any other reference (``2\\sqrt{3}``, ``\\frac{\\pi}{2}``, intervals, matrices) is compared
  symbolically by math-verify, bounded in time (:mod:`dapo_cli.tasks.symbolic`).

The fast path decides every integer reference (this project's maths task, GSM8K,
DAPO-Math-17k) without sympy.
"""

from __future__ import annotations

import re
from collections import deque
from fractions import Fraction

from dapo_cli.tasks import symbolic
from dapo_cli.tasks.base import ANSWER_MARKER, Score, extract_answer, normalize_answer

# Longer final answers are wrong without being read: no reference is this long, and every
# step below is then cheap whatever a completion holds.
MAX_ANSWER_CHARS = 1000
_MAX_NUMBER_CHARS = 100  # a longer "number" is not parsed (int() of huge strings is slow)

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE = re.compile(r"[{}]")
# Signs only where a minus cannot be subtraction (not after a digit or a letter).
_LAST_NUMBER = re.compile(
    r"(?<![\w.,/])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:/[0-9]+)?(?![0-9])"
)

_DELIMITERS = re.compile(r"\$|\\[()\[\]]")
_TEXT_MACROS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_THIN_THOUSANDS = re.compile(r"(?<=[0-9])(?:\\,|\{,\}|\\ )(?=[0-9]{3})")
_LATEX_SPACES = re.compile(r"\\[,;:! ]|~")
_SIZERS = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PERCENT = re.compile(r"\\?%")
_ASSIGNMENT = re.compile(r"^\\?[a-z][a-z0-9]*(?:_\{?[a-z0-9]+\}?)?\s*=\s*")
_PLAIN = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]{1,3})?$")
_THOUSANDS = re.compile(r"^[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?$")
_FRAC = re.compile(r"^([+-]?)\\frac\s*(\{[^{}]*\}|[0-9])\s*(\{[^{}]*\}|[0-9])$")
# Words after a number that change its value: never dropped as a unit.
_NOT_UNITS = frozenset(
    ("pi", "sqrt", "times", "squared", "cubed", "dozen")
    + ("hundred", "thousand", "million", "billion", "trillion")
)


def last_boxed(text: str) -> str:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; for
    ``\\boxed 5`` the text after it up to ``$`` or the end of the line. ValueError when
    there is none, or when the last one is not closed (a truncated answer is no answer)."""
    match = _last_match(_BOXED, text)
    if match is None:
        raise ValueError("the solution has no \\boxed{...}")
    i = match.end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i == len(text) or text[i] != "{":
        content = re.split(r"[$\n]", text[i:], maxsplit=1)[0].strip()
        if not content:
            raise ValueError("the last \\boxed is empty")
        return content
    depth = 0
    for brace in _BRACE.finditer(text, i):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return text[i + 1 : brace.start()].strip()
    raise ValueError("the last \\boxed{ is not closed")


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    """The last match of ``pattern`` in ``text``, None without one (one pass, no list)."""
    found = deque(pattern.finditer(text), maxlen=1)
    return found[0] if found else None


def boxed_answer(text: str) -> str | None:
    """:func:`last_boxed`, or None where it finds nothing."""
    try:
        return last_boxed(text) or None
    except ValueError:
        return None


def final_answer(completion: str, last_number: bool = False) -> tuple[str, str] | None:
    """``(answer, rule)``: the final answer of ``completion`` and the rule that found it
    (``answer``, ``boxed`` or ``last_number``, see the module docstring); None when none does.
    A ``\\boxed{}`` on the ``Answer:`` line is unwrapped."""
    line = extract_answer(completion)
    if line is not None:
        return boxed_answer(line) or line, "answer"
    boxed = boxed_answer(completion)
    if boxed is not None:
        return boxed, "boxed"
    if last_number:
        number = _last_match(_LAST_NUMBER, completion)
        if number is not None:
            return number.group(), "last_number"
    return None


def has_final_answer(completion: str) -> bool:
    """Whether ``completion`` gives its final answer in a form we ask for: an ``Answer:``
    followed by text (on its line or below, as code and creative answers are), or a
    ``\\boxed{}``. The last number of a text does not count."""
    marker = _last_match(ANSWER_MARKER, completion)
    if marker is not None and completion[marker.end() :].strip():
        return True
    return boxed_answer(completion) is not None


def plain(text: str) -> str:
    """``text`` without the decoration that never changes an answer's meaning, normalised
    (:func:`normalize_answer`): ``$``, ``\\boxed{}``, ``\\text{}``, ``\\left``/``\\right``,
    LaTeX spaces, ``%``, degrees, a leading ``x =``; ``\\dfrac`` is ``\\frac``."""
    s = boxed_answer(text) if _BOXED.search(text) else None
    s = (s or text).replace("\u2212", "-")  # the typographic minus
    s = _DELIMITERS.sub("", s.replace("\\$", ""))  # \$ first: a dollar sign, not a delimiter
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _TEXT_MACROS.sub(r" \1 ", s)
    s = _THIN_THOUSANDS.sub("", s).replace("{,}", ",")
    s = _LATEX_SPACES.sub(" ", s)
    s = _SIZERS.sub("", s)
    s = _DEGREES.sub("", s)
    s = _PERCENT.sub("", s)
    s = normalize_answer(s)
    if s.count("=") == 1:
        s = normalize_answer(_ASSIGNMENT.sub("", s))
    return s


def exact_number(text: str) -> Fraction | None:
    """The value of ``text`` (already :func:`plain`) when it is one number: an integer or
    decimal (thousands separators, sign), ``a/b`` or ``\\frac{a}{b}``, maybe followed by a
    unit in words (``18 dollars``); None otherwise (``\\frac{1}{0}`` included)."""
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    value = _number(text)
    if value is None:  # a unit in words after the number: "18 dollars", "5 cm"
        words = text.split()
        while words and words[-1].rstrip(".").isalpha() and len(words[-1]) > 1:
            if words[-1].rstrip(".") in _NOT_UNITS:
                return None
            words.pop()
            value = _number(" ".join(words))
            if value is not None:
                break
    return value


def _number(s: str) -> Fraction | None:
    s = re.sub(r"^([+-])\s+", r"\1", s.strip())
    frac = _FRAC.match(s)
    if frac:
        num, den = (_decimal(part.strip("{}").strip()) for part in frac.group(2, 3))
        if num is None or den is None or den == 0:
            return None
        return -num / den if frac.group(1) == "-" else num / den
    if s.count("/") == 1:
        num, den = (_decimal(part.strip()) for part in s.split("/"))
        if num is None or den is None or den == 0:
            return None
        return num / den
    return _decimal(s)


def _decimal(s: str) -> Fraction | None:
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return Fraction(s) if _PLAIN.match(s) else None


def equivalent(answer: str, reference: str) -> bool:
    """Whether ``answer`` equals ``reference`` (see the module docstring). Returns within
    about :data:`symbolic.SECONDS <dapo_cli.tasks.symbolic.SECONDS>` whatever ``answer``
    holds; raises only :class:`~dapo_cli.tasks.symbolic.SymbolicUnavailable` (the machine,
    not the answer)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    a, r = plain(answer), plain(reference)
    if a == r:
        return bool(a)
    expected = exact_number(r)
    if expected is not None:
        return exact_number(a) == expected
    return symbolic.equivalent(_latex(answer), _latex(reference))


def _latex(text: str) -> str:
    """What math-verify is given: the answer without ``$`` and ``\\boxed{}`` (it reads the
    rest of the decoration itself; lower-casing would change ``\\Delta`` and ``X``)."""
    boxed = boxed_answer(text) if _BOXED.search(text) else None
    return _DELIMITERS.sub("", boxed or text).strip().rstrip(".").strip()


def math_match(completion: str, reference: str, last_number: bool = False) -> Score:
    """+1 iff the final answer of ``completion`` (:func:`final_answer`) is equivalent to
    ``reference`` (:func:`equivalent`); ``details`` name the answer and the rule."""
    found = final_answer(completion, last_number)
    if found is None:
        return Score.binary(False, extracted=None, reason="no 'Answer:' or \\boxed{} found")
    answer, rule = found
    return Score.binary(equivalent(answer, reference), extracted=answer, rule=rule)
