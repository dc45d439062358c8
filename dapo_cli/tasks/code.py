"""Implement a named Python function; the completion is checked by hidden test cases run in
the sandbox (:mod:`dapo_cli.sandbox`).

The problems are data in ``templates/tasks/code.json``: each spec has an id, a difficulty, a
few function names, a signature, a description, the SOURCE of a reference implementation,
the kinds of arguments it takes, optional edge cases and optional parameters. ``$param``
(``$param_r`` for the ``repr``, ``$name`` for the function name) is filled in every text,
parameters included (two levels deep). ``params`` is a list of dicts (the variants) or a
dict of lists whose product gives them: ``{"range": [lo, hi(, step)]}`` is an inclusive
range and a dict in a list is a bundle of parameters that vary together; ``derive`` adds
parameters computed by Python expressions, ``where`` keeps the variants it is true for. The
expected outputs come from running the reference (our own trusted code) in-process on
generated inputs; the model's code only ever runs in the sandbox.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from string import Template
from typing import Any

from dapo_cli.sandbox import run_function_tests
from dapo_cli.tasks.base import DIFFICULTIES, Score, Task, canonical_json
from dapo_cli.tasks.templates import load_template

TIMEOUT = 5.0  # seconds of wall clock for all of one sample's tests
TESTS_PER_SAMPLE = (5, 8)
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_FENCES = {"", "python", "python3", "py"}
_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_ROMAN = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
          (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]  # fmt: skip


def extract_code(completion: str) -> str | None:
    """The last ```python (or bare ```) fenced block; else the text after the last
    ``Answer:``; else the whole completion. None when that is empty."""
    blocks = [body for lang, body in _FENCE.findall(completion) if lang.lower() in _PYTHON_FENCES]
    if blocks:
        text = blocks[-1]
    else:
        markers = list(_ANSWER.finditer(completion))
        text = completion[markers[-1].end() :] if markers else completion
        first, _, rest = text.partition("\n")
        if markers and first.strip():  # the code starts on the marker's own line
            text = first.strip() + "\n" + rest
    text = textwrap.dedent(text).strip("\n").rstrip()
    return text + "\n" if text.strip() else None


def fill(value: Any, mapping: Mapping[str, Any]) -> Any:
    """Fill ``$placeholders`` (``$$`` is a dollar sign) in every string of ``value``; a string
    that is one placeholder alone becomes the parameter itself (so ``"$k"`` can be an int)."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and (whole.group(1) or whole.group(2)) in mapping:
            return mapping[whole.group(1) or whole.group(2)]
        return Template(value).substitute(mapping)
    if isinstance(value, list):
        return [fill(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, mapping) for k, v in value.items()}
    return value


def variants(problem: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The parameter sets of one problem spec (see the module docstring)."""
    spec = json.dumps([problem.get(k) for k in ("params", "derive", "where")])
    return [dict(v) for v in _variants(spec)]


def _with_reprs(values: Mapping[str, Any]) -> dict[str, Any]:
    return {**values, **{f"{k}_r": repr(v) for k, v in values.items()}}


@cache
def _variants(spec: str) -> tuple[dict[str, Any], ...]:
    params, derive, where = json.loads(spec)

    def evaluate(expression: str, variant: dict[str, Any]) -> Any:  # our own data, as references
        return eval(Template(expression).substitute(_with_reprs(variant)), {"math": math})

    found = [] if isinstance(params, dict) else [dict(p) for p in params or [{}]]
    if isinstance(params, dict):
        axes = [list(range(v["range"][0], v["range"][1] + 1, *v["range"][2:]))
                if isinstance(v, dict) else v for v in params.values()]  # fmt: skip
        for combo in itertools.product(*axes):
            found.append({})
            for key, value in zip(params, combo, strict=True):  # a dict is a bundle
                found[-1].update(value if isinstance(value, dict) else {key: value})
    for variant in found:
        variant.update({k: evaluate(expr, variant) for k, expr in (derive or {}).items()})
    return tuple(v for v in found if where is None or evaluate(where, v))


@cache
def _problems(difficulty: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    problems = load_template("code")["problems"]
    found = [(p, variants(p)) for p in problems if p["difficulty"] == difficulty]
    if not found:
        raise ValueError(f"templates/tasks/code.json has no {difficulty!r} problems")
    return found


@lru_cache(maxsize=4096)
def reference_function(source: str, name: str) -> Callable[..., Any]:
    """Define the (trusted) reference source in a fresh namespace and return the function."""
    namespace: dict[str, Any] = {"__name__": "dapo_reference"}
    exec(compile(source, f"<reference {name}>", "exec"), namespace)
    return namespace[name]


def _rand_str(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _brackets(rng: random.Random, pairs: str, lo: int, hi: int) -> str:
    """Balanced brackets of lo..hi pairs, corrupted half of the time."""
    out, stack, n = [], [], rng.randint(lo, hi)
    opened = 0
    while opened < n or stack:
        if opened < n and (not stack or rng.random() < 0.5):
            i = rng.randrange(0, len(pairs), 2)
            out.append(pairs[i])
            stack.append(pairs[i + 1])
            opened += 1
        else:
            out.append(stack.pop())
    if rng.random() < 0.5:
        at = rng.randint(0, len(out))
        if out and rng.random() < 0.5:
            del out[min(at, len(out) - 1)]
        else:
            out.insert(at, rng.choice(pairs))
    return "".join(out)


def _make_args(specs: list[dict[str, Any]], rng: random.Random) -> list[Any]:
    """One argument list from the argument specs (see templates/tasks/code.json)."""
    args: list[Any] = []
    for spec in specs:
        kind, size = spec["type"], (spec.get("min_len", 0), spec.get("max_len", 0))
        if kind == "int":
            args.append(rng.randint(spec["lo"], spec["hi"]))
        elif kind == "int_list":
            scale = rng.randint(*spec.get("scale", [1, 1]))
            n = rng.randint(*size)
            nums = [rng.randint(spec["lo"], spec["hi"]) * scale for _ in range(n)]
            args.append(sorted(nums) if spec.get("sorted") else nums)
        elif kind == "str" and rng.random() < spec.get("palindrome", 0):
            half = _rand_str(rng, spec["alphabet"], 0, size[1] // 2)
            args.append(half + _rand_str(rng, spec["alphabet"], 0, 1) + half[::-1])
        elif kind == "str":
            args.append(_rand_str(rng, spec["alphabet"], *size))
        elif kind == "words":
            vocab = load_template("code")["words"][: spec.get("vocab")]
            args.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(*size))))
        elif kind == "str_list":
            prefix = _rand_str(rng, spec["alphabet"], *spec.get("prefix", [0, 0]))
            lo, hi = spec["min_str"], spec["max_str"]
            strings = [
                prefix + _rand_str(rng, spec["alphabet"], lo, hi) for _ in range(rng.randint(*size))
            ]
            args.append(strings)
        elif kind == "grid":
            rows, cols = rng.randint(*spec["rows"]), rng.randint(*spec["cols"])
            args.append(
                [[rng.randint(spec["lo"], spec["hi"]) for _ in range(cols)] for _ in range(rows)]
            )
        elif kind == "int_pairs":
            pairs = [
                [rng.randint(*spec["first"]), rng.randint(*spec["second"])]
                for _ in range(rng.randint(*size))
            ]
            args.append([[a, a + b] for a, b in pairs] if spec.get("ordered") else pairs)
        elif kind == "roman":
            n, numeral = rng.randint(spec["lo"], spec["hi"]), ""
            for value, letters in _ROMAN:
                numeral += letters * (n // value)
                n %= value
            args.append(numeral)
        elif kind == "anagram_pair":  # two arguments: a string and a shuffle, often altered
            a = _rand_str(rng, spec["alphabet"], *size)
            b = rng.sample(a, len(a))
            if b and rng.random() < 0.25:
                b[rng.randrange(len(b))] = rng.choice(spec["alphabet"])
            elif rng.random() < 0.33:
                b.insert(rng.randint(0, len(b)), rng.choice(spec["alphabet"]))
            args += [a, "".join(b)]
        elif kind == "brackets":
            args.append(_brackets(rng, spec["pairs"], *size))
        else:
            raise ValueError(f"unknown argument type {kind!r} in templates/tasks/code.json")
    return args


def _tests(rng: random.Random, problem: Mapping, mapping: Mapping, fn: Callable) -> list[dict]:
    """Edge cases first, then distinct random inputs. While tries last, an input is skipped if
    its output already answers half the tests, so no constant answer passes them all."""

    def case(args: list) -> dict:  # the reference gets copies (it may mutate); JSON round trip
        return {"args": args, "expected": json.loads(json.dumps(fn(*copy.deepcopy(args))))}

    n = rng.randint(*TESTS_PER_SAMPLE)
    tests = [case(args) for args in fill(problem.get("edge") or [], mapping)[: n - 2]]
    seen = {canonical_json(t["args"]) for t in tests}
    outputs = Counter(canonical_json(t["expected"]) for t in tests)
    specs = fill(problem["args"], mapping)
    for tries in range(60 * n):
        if len(tests) >= n:
            break
        test = case(_make_args(specs, rng))
        key, output = canonical_json(test["args"]), canonical_json(test["expected"])
        if key in seen or (outputs[output] >= n // 2 and tries < 40 * n):
            continue
        seen.add(key)
        outputs[output] += 1
        tests.append(test)
    return tests


def make_sample(problem: Mapping, params: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One sample of one problem variant: prompt, reference source and hidden tests."""
    template = load_template("code")
    raw = values = {**params, "name": fill(rng.choice(problem["names"]), _with_reprs(params))}
    for _ in range(2):  # parameters hold placeholders too ("def $name(n: int) -> str")
        mapping = _with_reprs(values)
        values = {k: fill(v, mapping) for k, v in raw.items()}
    mapping, name = _with_reprs(values), values["name"]
    reference = fill(problem["reference"], mapping)
    tests = _tests(rng, problem, mapping, reference_function(reference, name))
    example = tests[-1]  # a random case (the edge cases come first)
    call = f"{name}({', '.join(map(repr, example['args']))})"
    signature = fill(problem["signature"], mapping)
    description = fill(problem["description"], mapping)
    prompt = (
        f"{rng.choice(template['phrasings'])}\n\n    {signature}\n\n{description}\n\n"
        f"For example, {call} should return {example['expected']!r}.\n\n" + template["instruction"]
    )
    verify = {"function": name, "tests": tests, "problem": problem_key(problem, params)}
    return {"prompt": prompt, "answer": reference, "verify": verify}


def problem_key(problem: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """What identifies a problem: its spec id and parameter values (not its name or wording)."""
    digest = hashlib.sha256(canonical_json(params).encode()).hexdigest()[:12]
    return f"{problem['id']}:{digest}" if params else problem["id"]


class CodeTask(Task):
    name = "code"
    runs_code = True  # its verifier runs the completion in the sandbox
    description = "implement a named Python function, checked by hidden test cases in a sandbox"

    def generate(self, rng: random.Random, difficulty: str) -> dict[str, Any]:
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"unknown difficulty {difficulty!r}")
        problem, options = rng.choice(_problems(difficulty))
        return make_sample(problem, rng.choice(options), rng)

    def verify(self, sample: Mapping[str, Any], completion: str) -> Score:
        code = extract_code(completion)
        if code is None:
            return Score.binary(False, reason="no code found")
        spec = sample["verify"]
        timeout = float(spec.get("timeout", TIMEOUT))
        result = run_function_tests(code, spec["function"], spec["tests"], timeout=timeout)
        return Score.binary(
            result.all_passed,
            passed=result.passed,
            total=result.total,
            error=result.error,
            timed_out=result.timed_out,
        )

    def check_verify(self, verify: Mapping[str, Any]) -> str | None:
        function = verify.get("function")
        if not isinstance(function, str) or not function.isidentifier():
            return "verify.function must be the name of a Python function"
        tests = verify.get("tests")
        if not isinstance(tests, list) or not tests:
            return "verify.tests must be a non-empty list"
        for i, test in enumerate(tests):
            if (
                not isinstance(test, Mapping)
                or not isinstance(test.get("args"), list)
                or "expected" not in test
            ):
                return f"verify.tests[{i}] must look like {{'args': [...], 'expected': ...}}"
        timeout = verify.get("timeout", TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            return "verify.timeout must be a positive number of seconds"
        return None

    def dedupe_key(self, sample: Mapping[str, Any]) -> str:
        # the same problem under another function name or phrasing is the same problem
        problem = sample["verify"].get("problem")
        return f"code:{problem}" if problem else super().dedupe_key(sample)

    def format_reference(self, sample: Mapping[str, Any]) -> str:
        return f"Answer:\n```python\n{sample['answer'].rstrip()}\n```"
