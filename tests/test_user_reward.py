"""A reward function of the user's (`--reward file.py:fn`), called in batches as TRL calls
reward functions; bad specs and bad return values are one line."""

import helpers  # noqa: F401  (registers the task types of the data_file fixture)
import pytest
from typer.testing import CliRunner

from dapo_cli.cli.app import app
from dapo_cli.errors import DapoError
from dapo_cli.user_reward import call_reward, load_reward

REWARDS = """
CALLS = []

def even_length(prompts, completions, answer, task_type, **columns):
    CALLS.append((len(prompts), len(completions), sorted(columns)))
    return [1.0 if len(c) % 2 == 0 else -0.5 for c in completions]

def graded(prompts, completions, **columns):
    return [(0.25, True) for _ in completions]

def too_few(prompts, completions, **columns):
    return [1.0]

def not_numbers(prompts, completions, **columns):
    return ["yes" for _ in completions]

def broken(prompts, completions, **columns):
    raise RuntimeError("no luck")
"""


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return path


SAMPLES = [
    {"id": "a", "task_type": "math", "prompt": "1+1?", "answer": "2", "split": "train"},
    {"id": "b", "task_type": "math", "prompt": "2+2?", "answer": "4", "split": "train"},
]


def test_called_in_a_batch_with_every_sample_column(reward_file):
    fn = load_reward(f"{reward_file}:even_length")
    rewards, correct = call_reward(fn, SAMPLES, ["ab", "abc", "abcd", "x"], repeat=2)
    assert rewards == [1.0, -0.5, 1.0, -0.5] and correct == [True, False, True, False]
    module_calls = fn.__globals__["CALLS"]
    assert module_calls == [(4, 4, ["id", "split"])]  # one call; answer/task_type named
    graded = load_reward(f"{reward_file}:graded")
    assert call_reward(graded, SAMPLES, ["x", "y"], repeat=1) == ([0.25, 0.25], [True, True])


def test_a_module_path_works_too():
    fn = load_reward("os.path:basename")  # any importable module:function
    assert fn("/a/b") == "b"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expects path/to/file.py:function"),
        ("missing.py:fn", "missing.py not found"),
        ("REWARD:nothing_here", "has no function 'nothing_here'"),
        ("no_such_module_xyz:fn", "cannot import no_such_module_xyz"),
    ],
)
def test_bad_specs_are_one_line(reward_file, spec, message):
    spec = spec.replace("REWARD", str(reward_file))
    with pytest.raises(DapoError, match=message):
        load_reward(spec)


@pytest.mark.parametrize(
    ("name", "message"),
    [("too_few", "returned 1 values for 2"), ("not_numbers", "expected a finite number"),
     ("broken", "raised RuntimeError: no luck")],
)  # fmt: skip
def test_bad_returns_are_one_line(reward_file, name, message):
    with pytest.raises(DapoError, match=message):
        call_reward(load_reward(f"{reward_file}:{name}"), SAMPLES, ["x", "y"], repeat=1)


def test_dapo_train_with_a_user_reward(tmp_path, data_file, reward_file):
    db = tmp_path / "d.db"
    result = CliRunner().invoke(app, [
        "train", "--data", str(data_file), "--reward", f"{reward_file}:even_length",
        "--steps", "2", "--group-size", "4", "--output-dir", str(tmp_path / "ck"),
        "--db-path", str(db), "--set", "warm_start.enabled=off",
        "--set", "rollout.max_new_tokens=8", "--set", "algorithm.overlong_cache_len=2",
        "--set", "algorithm.soft_overlong_punishment=false",
        "--set", "train.train_batch_size=2", "--set", "train.gen_batch_size=4",
        "--set", "train.mini_batch_size=2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not sandboxed" in result.output
    from dapo_cli.store import Store

    store = Store(db, create=False)
    run = store.runs("train")[-1]
    rewards = [m["value"] for m in store.metrics(run["id"]) if m["name"] == "reward_mean"]
    assert rewards and all(-0.5 <= r <= 1.0 for r in rewards)  # the function's values only
    bad = CliRunner().invoke(app, ["train", "--data", str(data_file), "--reward", "x.py:f",
                                   "--db-path", str(db)])  # fmt: skip
    assert bad.exit_code == 1 and "x.py not found" in bad.stderr
