"""The code task: every problem variant's reference passes its own hidden tests (in-process
for every variant, in the sandbox for a sample of every spec), the problem space is large at
every difficulty, wrong code fails, generation is deterministic, and code is found in fenced,
'Answer:' and bare form."""

from __future__ import annotations

import json
import random
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from dapo_cli import datagen
from dapo_cli.sandbox import values_equal
from dapo_cli.tasks import code, get_task
from dapo_cli.tasks.base import DIFFICULTIES
from dapo_cli.tasks.code import (
    CodeTask,
    extract_code,
    make_sample,
    problem_key,
    reference_function,
    variants,
)
from dapo_cli.tasks.templates import load_template

TASK = CodeTask()
PROBLEMS = load_template("code")["problems"]
FLOOR = 2000  # distinct problems at each difficulty (generate_dataset(6000, ["code"]) needs it)


def sample(seed: int = 0, difficulty: str = "easy") -> dict:
    return TASK.generate(random.Random(seed), difficulty)


def check_in_process(s: dict) -> None:
    assert TASK.check_verify(s["verify"]) is None
    fn = reference_function(s["answer"], s["verify"]["function"])
    for test in s["verify"]["tests"]:
        got = json.loads(json.dumps(fn(*json.loads(json.dumps(test["args"])))))
        assert values_equal(got, test["expected"]), (s["verify"]["problem"], test)


def test_registered_and_catalogue_is_large():
    assert isinstance(get_task("code"), CodeTask)
    assert len(PROBLEMS) >= 100 and len({p["id"] for p in PROBLEMS}) == len(PROBLEMS)
    per_level = Counter()
    for p in PROBLEMS:
        found = variants(p)
        assert len({json.dumps(v, sort_keys=True) for v in found}) == len(found), p["id"]
        per_level[p["difficulty"]] += len(found)
    assert set(per_level) == set(DIFFICULTIES)
    assert all(per_level[d] >= FLOOR for d in DIFFICULTIES), per_level


def test_parameter_mechanism():
    spec = {
        "params": {
            "k": {"range": [1, 7, 3]},
            "op": [{"op": "sum", "expr": "a + $k"}, {"op": "diff", "expr": "a - $k"}],
        },
        "derive": {"twice": "2 * $k", "label": "$op_r.upper()"},
        "where": "$twice != 8",
    }
    assert variants(spec) == [
        {"k": k, "op": op, "expr": f"a {sign} $k", "twice": 2 * k, "label": op.upper()}
        for k in (1, 7)
        for op, sign in (("sum", "+"), ("diff", "-"))
    ]
    assert variants({}) == [{}] and variants({"params": [{"x": 1}]}) == [{"x": 1}]
    problem = {
        "id": "demo", "names": ["add_$k"], "signature": "def $name(a: int) -> int",
        "description": "Return $what.", "reference": "def $name(a):\n    return $expr\n",
        "args": [{"type": "int", "lo": -50, "hi": 50}],
        "params": {"k": [7], "form": [{"expr": "a + $k"}]},  # a parameter refers to another
        "derive": {"what": "'a + ' + str($k)"},
    }  # fmt: skip
    s = make_sample(problem, variants(problem)[0], random.Random(0))
    assert s["verify"]["function"] == "add_7" and "return a + 7" in s["answer"]
    assert "Return a + 7." in s["prompt"]
    assert all(t["expected"] == t["args"][0] + 7 for t in s["verify"]["tests"])
    assert s["verify"]["problem"] == problem_key(problem, variants(problem)[0])


def test_thousands_of_references_pass_their_own_tests_in_process():
    keys, counts = set(), Counter()
    for seed in range(2400):
        s = sample(seed, DIFFICULTIES[seed % 3])
        check_in_process(s)
        assert 5 <= len(s["verify"]["tests"]) <= 8
        assert s["prompt"].endswith("Write the function in a ```python code block after 'Answer:'.")
        assert f"def {s['verify']['function']}(" in s["prompt"]
        outputs = Counter(json.dumps(t["expected"]) for t in s["verify"]["tests"])
        assert outputs.most_common(1)[0][1] < len(s["verify"]["tests"])  # no constant answer
        keys.add(TASK.dedupe_key(s))
        counts[s["verify"]["problem"].split(":")[0]] += 1
    assert set(counts) == {p["id"] for p in PROBLEMS}  # every problem is reachable
    assert len(keys) >= 1500


def test_every_variant_compiles_and_passes_in_process():
    rng = random.Random(7)
    keys: dict[str, set[str]] = {d: set() for d in DIFFICULTIES}
    count = Counter()
    for problem in PROBLEMS:
        for params in variants(problem):
            s = make_sample(problem, params, rng)
            assert s["verify"]["function"].isidentifier()
            check_in_process(s)
            keys[problem["difficulty"]].add(TASK.dedupe_key(s))
            count[problem["difficulty"]] += 1
        for name in problem["names"]:  # every name template gives a valid function name
            s = make_sample({**problem, "names": [name]}, rng.choice(variants(problem)), rng)
            assert s["verify"]["function"].isidentifier()
    # every variant is a distinct problem for deduplication, and there are enough of them
    assert all(len(keys[d]) == count[d] >= FLOOR for d in DIFFICULTIES), count


def test_a_sample_of_every_spec_passes_in_the_sandbox():
    rng = random.Random(11)
    samples = [make_sample(p, rng.choice(variants(p)), rng) for p in PROBLEMS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        scores = list(pool.map(lambda s: TASK.verify(s, TASK.format_reference(s)), samples))
    failed = [
        (s["verify"]["problem"], sc.details)
        for s, sc in zip(samples, scores, strict=True)
        if not sc.correct
    ]
    assert not failed
    assert all(sc.reward == 1.0 and sc.details["passed"] == sc.details["total"] for sc in scores)


def test_large_datasets_find_enough_distinct_problems(monkeypatch):
    # the real generate_dataset loop over CodeTask.generate, with samples reduced to their key
    def key_only(problem, params, rng):
        key = problem_key(problem, params)
        return {
            "prompt": key,
            "answer": "",
            "verify": {"function": "f", "tests": [], "problem": key},
        }

    monkeypatch.setattr(code, "make_sample", key_only)
    hard = datagen.generate_dataset(2000, ["code"], difficulty="hard")
    mixed = datagen.generate_dataset(6000, ["code"])
    assert len({r["verify"]["problem"] for r in hard}) == 2000
    assert Counter(r["difficulty"] for r in mixed) == {d: 2000 for d in DIFFICULTIES}
    assert len({r["verify"]["problem"] for r in mixed}) == 6000


def test_wrong_implementations_fail():
    s = sample(3, "medium")
    name = s["verify"]["function"]
    for wrong in (f"def {name}(*args):\n    return None\n",
                  f"def {name}(*args):\n    raise ValueError('no')\n",
                  "def other_name(*args):\n    return 1\n",
                  "this is not python"):  # fmt: skip
        score = TASK.verify(s, f"Answer:\n```python\n{wrong}```")
        assert not score.correct and score.reward == -1.0
        assert score.details.get("passed", 0) < len(s["verify"]["tests"])
    # a variant with another parameter passes some tests but not all
    problem = next(p for p in PROBLEMS if p["id"] == "sum_of_multiples")
    k3, k6 = ([v for v in variants(problem) if v["k"] == k][0] for k in (3, 6))
    good = make_sample(problem, k3, random.Random(0))
    bad = make_sample(problem, k6, random.Random(0))
    bad_code = bad["answer"].replace(bad["verify"]["function"], good["verify"]["function"])
    score = TASK.verify(good, bad_code)
    assert not score.correct


def test_timeout_in_verify():
    s = dict(sample(0))
    s["verify"] = {**s["verify"], "timeout": 1}
    name = s["verify"]["function"]
    score = TASK.verify(s, f"```python\ndef {name}(*a):\n    while True:\n        pass\n```")
    assert not score.correct and score.details["timed_out"]


def test_deterministic():
    for seed in range(30):
        for d in DIFFICULTIES:
            assert sample(seed, d) == sample(seed, d)
    assert len({sample(seed)["prompt"] for seed in range(30)}) > 20


def test_dedupe_key_ignores_names_and_phrasing():
    problem = next(p for p in PROBLEMS if p["id"] == "caesar")
    params = variants(problem)[3]
    keys = {TASK.dedupe_key(make_sample(problem, params, random.Random(i))) for i in range(10)}
    prompts = {make_sample(problem, params, random.Random(i))["prompt"] for i in range(10)}
    assert len(keys) == 1 and len(prompts) > 1
    other = TASK.dedupe_key(make_sample(problem, variants(problem)[4], random.Random(0)))
    assert other not in keys
    bare = {"prompt": "Write  F", "verify": {"function": "f", "tests": []}}
    assert TASK.dedupe_key(bare) == "write f"


CODE = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return 0\n"


@pytest.mark.parametrize(
    "completion",
    [
        f"Think.\n```python\n{WRONG}```\nBetter:\nAnswer:\n```python\n{CODE}```",
        f"Sure.\n```\n{CODE}```\nDone.",
        f"```python\n{WRONG}```\n```text\nsome output\n```\n```py\n{CODE}```",
        f"Answer:\n```python\n{WRONG}```\nNo, this:\n```Python\n{CODE}```\n",
        f"Answer:\n```python\n{CODE}",  # unterminated fence (cut off)
        f"I add them.\nAnswer:\n{CODE}",
        f"answer: {CODE}",
        CODE,
        textwrap.indent(CODE, "    "),
    ],
)
def test_extraction_forms(completion):
    assert extract_code(completion) == CODE


def test_extraction_nothing():
    assert extract_code("") is None and extract_code("Answer:\n```python\n```") is None
    s = sample(0)
    assert TASK.verify(s, "Answer:   ").details["reason"] == "no code found"


def test_fenced_bare_and_answer_forms_pass_in_the_sandbox():
    s = sample(4, "easy")
    ref = s["answer"]
    for completion in (TASK.format_reference(s), ref, f"Answer:\n{ref}", f"```\n{ref}```"):
        assert TASK.verify(s, completion).correct, completion


def test_format_reference():
    s = sample(2, "hard")
    text = TASK.format_reference(s)
    assert text.startswith("Answer:\n```python\ndef ") and text.endswith("\n```")
    assert extract_code(text) == s["answer"]


def test_check_verify():
    good = {"function": "f", "tests": [{"args": [1], "expected": 2}]}
    assert TASK.check_verify(good) is None
    assert TASK.check_verify({**good, "timeout": 2.5}) is None
    for bad in (
        {},
        {"function": "not a name", "tests": good["tests"]},
        {"function": "f", "tests": []},
        {"function": "f", "tests": [{"args": 1, "expected": 2}]},
        {"function": "f", "tests": [{"args": [1]}]},
        {**good, "timeout": 0},
    ):
        assert isinstance(TASK.check_verify(bad), str), bad


def test_unknown_difficulty():
    with pytest.raises(ValueError):
        TASK.generate(random.Random(0), "impossible")
