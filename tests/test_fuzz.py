"""Fuzzed bad input: whatever a user or a model throws at the entry points, the answer is one
clear line and exit 1 with nothing written (files, flags), or a bool (verifiers)."""

from __future__ import annotations

import json
import math
import random
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dapo_cli.cli.app import app
from dapo_cli.config import Config, load_config
from dapo_cli.errors import DapoError
from dapo_cli.tasks import TASKS

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
runner = CliRunner()

# text a user's file or a model may contain: control characters, lone surrogates (which
# JSON can spell), right-to-left marks, NUL, emoji, CJK
odd_text = st.text(
    alphabet=st.characters(codec=None, blacklist_categories=()), max_size=200
) | st.sampled_from(["\x00", "\ud800", "\u202e\u202d", "🙂" * 50, "名前", "\r\n\r\n", "Answer:"])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | odd_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["id", "task_type", "difficulty", "split", "prompt", "answer", "verify", "extra"]
records = st.dictionaries(
    st.sampled_from(FIELDS) | odd_text,
    json_values | st.sampled_from(["math", "code", "puzzle", "train", "test"]),
    max_size=9,
)


def _one_line_error(result) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr


def _import(tmp_path, name: str, payload: bytes):
    path = tmp_path / name
    path.write_bytes(payload)
    db = tmp_path / "fuzz.db"
    db.unlink(missing_ok=True)
    result = runner.invoke(app, ["db", "import", str(path), "--db-path", str(db)])
    return result, db


@FUZZ
@given(payload=st.binary(max_size=2000), ext=st.sampled_from([".jsonl", ".csv", ".parquet"]))
def test_db_import_of_random_bytes_is_one_line_and_writes_nothing(tmp_path, payload, ext):
    result, db = _import(tmp_path, "random" + ext, payload)
    if result.exit_code == 0:  # e.g. an empty CSV with no rows is a valid, empty import
        return
    _one_line_error(result)
    assert not db.exists()


@FUZZ
@given(rows=st.lists(records, min_size=1, max_size=5))
def test_db_import_of_ill_formed_records_is_one_line_and_writes_nothing(tmp_path, rows):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    result, db = _import(tmp_path, "records.jsonl", text.encode("utf-8", "surrogatepass"))
    if result.exit_code == 0:
        return
    _one_line_error(result)
    assert not db.exists()


@pytest.mark.parametrize("field", ["prompt", "answer", "verify"])
def test_db_import_of_a_huge_field_is_one_line_and_writes_nothing(tmp_path, field):
    row = {"task_type": "math", "prompt": "What is 1 + 1?", "answer": "2"}
    row[field] = "x" * (17 * 1024 * 1024)  # one line longer than any sample
    result, db = _import(tmp_path, "huge.jsonl", (json.dumps(row) + "\n").encode())
    _one_line_error(result)
    assert "huge.jsonl:1:" in result.stderr and not db.exists()


def _task_samples() -> list[tuple[str, dict]]:
    rng = random.Random(0)
    out = []
    for name, task in sorted(TASKS.items()):
        for difficulty in ("easy", "medium", "hard"):
            out.append((name, {**task.generate(rng, difficulty), "task_type": name}))
    return out


SAMPLES = _task_samples()
completions = (
    odd_text
    | st.builds(lambda pre, ans, post: f"{pre}Answer: {ans}{post}", odd_text, odd_text, odd_text)
    | st.sampled_from(["```python\ndef f(:\n```", "Answer: ```python\nwhile True: pass\n```", ""])
)


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(SAMPLES) - 1), completion=completions)
def test_every_verifier_returns_a_bool_on_random_completions(which, completion):
    name, sample = SAMPLES[which]
    if name == "code":  # each code completion with code in it starts a sandbox: fewer
        assume("def " not in completion or random.Random(completion).random() < 0.2)
    score = TASKS[name].verify(sample, completion)  # the verifier itself, not score()
    assert isinstance(score.correct, bool)
    assert isinstance(score.reward, float) and math.isfinite(score.reward)


def _keys() -> list[str]:
    import dataclasses

    return [
        f"{s.name}.{f.name}"
        for s in dataclasses.fields(Config)
        for f in dataclasses.fields(s.default_factory())
    ]


set_items = st.builds(
    lambda k, sep, v: f"{k}{sep}{v}",
    st.sampled_from(_keys()) | odd_text | st.text(string.ascii_lowercase + ".", max_size=20),
    st.sampled_from(["=", "", "==", " = "]),
    odd_text | st.sampled_from(["-1", "0", "1e9", "nan", "inf", "true", "[1,2]", "null", ""]),
)


@settings(max_examples=300, deadline=None)
@given(item=set_items)
def test_any_set_override_loads_or_fails_in_one_line(item):
    try:
        load_config(None, [item])
    except DapoError as exc:
        assert "\n" not in str(exc) and str(exc)


@FUZZ
@given(item=set_items)
def test_a_bad_set_override_stops_train_before_any_work(tmp_path, item):
    try:
        load_config(None, [item])
    except DapoError:
        pass
    else:
        assume(False)  # a valid override would start training
    out = tmp_path / "ck"
    db = tmp_path / "d.db"
    result = runner.invoke(
        app, ["train", "--set", item, "--output-dir", str(out), "--db-path", str(db)]
    )
    _one_line_error(result)
    assert not out.exists() and not db.exists()
