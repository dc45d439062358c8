"""Datasets in other shapes through 🤗 datasets, offline: a small local dataset in each schema
(GSM8K, MATH, DAPO-Math-17k, named fields, this project's own) as a save_to_disk folder or a
data file; a Hub id without a network is one clear line."""

import json
import os
import subprocess
import sys

import datasets
import pytest
from typer.testing import CliRunner

from dapo_cli.cli.app import app
from dapo_cli.config import load_config
from dapo_cli.errors import DapoError
from dapo_cli.hub_data import gsm8k_answer, last_boxed, load_dataset_samples, user_turn
from dapo_cli.samples import load_samples

GSM8K = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
     "answer": "In May she sold 48 / 2 = <<48/2=24>>24.\nIn all <<48+24=72>>72.\n#### 72"},
    {"question": "A farm has 1,200 hens and buys 300 more. How many hens?",
     "answer": "1200 + 300 = 1500\n#### 1,500"},
]  # fmt: skip
MATH = [
    {"problem": "What is $\\frac{1}{4} + \\frac{1}{4}$?", "level": "Level 1",
     "solution": "We add: $\\frac{1}{4}+\\frac{1}{4} = \\boxed{\\frac{1}{2}}$."},
    {"problem": "Solve $x + 3 = 5$.", "solution": "First \\boxed{7} is wrong; $x = \\boxed{2}$."},
]  # fmt: skip
DAPO17K = [
    {"data_source": "math_dapo", "ability": "MATH",
     "prompt": [{"role": "system", "content": "Think step by step."},
                {"role": "user", "content": "Find the remainder of 17 divided by 5."}],
     "reward_model": {"ground_truth": "2", "style": "rule-lighteval/MATH_v2"}},
]  # fmt: skip


def _save_splits(path, train, test=None):
    parts = {"train": datasets.Dataset.from_list(train)}
    if test is not None:
        parts["test"] = datasets.Dataset.from_list(test)
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


def test_gsm8k_from_a_save_to_disk_folder_by_split(tmp_path):
    folder = _save_splits(tmp_path / "gsm8k", GSM8K[:1], GSM8K[1:])
    train = load_dataset_samples(folder, split="train", fmt="gsm8k")
    test = load_dataset_samples(folder, split="test", fmt="gsm8k")
    assert [(r["prompt"], r["answer"], r["task_type"], r["split"]) for r in train] == [
        (GSM8K[0]["question"], "72", "math", "train")
    ]
    assert test[0]["answer"] == "1500" and test[0]["split"] == "test"
    assert len(train[0]["id"]) == 16  # a content id, as for this project's own records
    with pytest.raises(DapoError, match="has no split 'validation' \\(it has train, test\\)"):
        load_dataset_samples(folder, split="validation", fmt="gsm8k")


def test_math_from_a_parquet_file_takes_the_last_boxed_answer(tmp_path):
    path = tmp_path / "math.parquet"
    datasets.Dataset.from_list(MATH).to_parquet(str(path))
    rows = load_dataset_samples(path, split="test", fmt="math")
    assert [r["answer"] for r in rows] == ["\\frac{1}{2}", "2"]
    assert all(r["split"] == "test" for r in rows)


def test_dapo_math_17k_from_jsonl_reads_the_user_turn_and_the_ground_truth(tmp_path):
    path = tmp_path / "dapo17k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in DAPO17K))
    (row,) = load_dataset_samples(path, split="train", fmt="dapo-math-17k")
    assert row["prompt"] == "Find the remainder of 17 divided by 5."
    assert row["answer"] == "2" and row["task_type"] == "math"


def test_named_fields_and_chat_messages(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([
        {"q": [{"role": "user", "content": "2 + 2?"}], "a": 4},
        {"q": "3 + 3?", "a": "6", "task_type": "math"},
    ]))  # fmt: skip
    rows, where = load_samples(path, split="train", fmt="fields", fields=("q", "a"))
    assert [(r["prompt"], r["answer"]) for r in rows] == [("2 + 2?", "4"), ("3 + 3?", "6")]
    assert where == f"{path} (split train)"


def test_this_projects_records_saved_with_datasets_keep_their_own_splits(tmp_path):
    rows = [{"task_type": "math", "prompt": f"What is {i} + 1?", "answer": str(i + 1),
             "split": "train" if i else "test"} for i in range(3)]  # fmt: skip
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ours"))
    train = load_dataset_samples(tmp_path / "ours", split="train")
    assert sorted(r["answer"] for r in train) == ["2", "3"]


@pytest.mark.parametrize(
    ("rows", "fmt", "message"),
    [
        ([{"question": "q?", "answer": "no marker"}], "gsm8k", "row 0, format gsm8k.*'####'"),
        ([{"problem": "p?", "solution": "no box"}], "math", "row 0, format math.*boxed"),
        ([{"question": "q?"}], "math", "row 0, format math.*missing field 'problem'"),
    ],
)
def test_a_bad_row_is_one_line_naming_the_row_and_format(tmp_path, rows, fmt, message):
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DapoError, match=message):
        load_dataset_samples(tmp_path / "bad", split="train", fmt=fmt)


def test_answer_helpers():
    assert gsm8k_answer("so\n#### -3,000") == "-3000"
    assert last_boxed("a \\boxed{x^{2}} b \\fbox{\\sqrt{2}}") == "\\sqrt{2}"
    assert user_turn([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "b"


def test_a_hub_id_without_a_network_is_one_line_and_exit_1(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dapo_cli", "eval", "--model", "tiny-1m", "--data",
         "nobody-here/no-such-dataset", "--data-format", "gsm8k", "--data-config", "main",
         "--db-path",
         str(tmp_path / "d.db")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Hugging Face Hub could not give it" in lines[0], lines
    assert "nobody-here/no-such-dataset (configuration main)" in lines[0]
    assert "save_to_disk" in lines[0]


def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path):
    with pytest.raises(DapoError, match="no such file or folder"):
        load_dataset_samples(tmp_path / "nope.arrow", split="train", fmt="math")


def test_train_and_eval_on_a_gsm8k_folder_from_the_command_line(tmp_path):
    """The issue's user: a save_to_disk GSM8K folder, a system prompt, their own reward."""
    folder = _save_splits(tmp_path / "gsm8k", GSM8K * 4, GSM8K)
    db = str(tmp_path / "d.db")
    reward = tmp_path / "my_reward.py"
    reward.write_text("def fn(prompts, completions, **columns):\n"
                      "    return [float(len(c) % 2) for c in completions]\n")  # fmt: skip
    train = CliRunner().invoke(app, [
        "train", "--data", str(folder), "--data-format", "gsm8k", "--data-split", "train",
        "--system", "Reply with 'Answer: N'.", "--reward", f"{reward}:fn", "--steps", "1",
        "--group-size", "2", "--output-dir", str(tmp_path / "ck"), "--db-path", db,
        "--set", "warm_start.enabled=off", "--set", "algorithm.dynamic_sampling=false",
        "--set", "rollout.max_new_tokens=4", "--set", "algorithm.overlong_cache_len=1",
        "--set", "train.train_batch_size=2", "--set", "train.mini_batch_size=2",
    ])  # fmt: skip
    assert train.exit_code == 0, train.output
    assert "data: 8 samples from" in train.output
    assert f"reward: {reward}:fn (in this process" in train.output
    saved = load_config(tmp_path / "ck" / "config.yaml").data  # the run's own configuration
    assert saved.system_prompt == "Reply with 'Answer: N'." and saved.split == "train"
    evaluated = CliRunner().invoke(app, [
        "eval", "--model", str(tmp_path / "ck" / "dapo_final"), "--data", str(folder),
        "--data-format", "gsm8k", "--k", "1", "--db-path", db, "--json",
    ])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads(evaluated.stdout)["models"][0]["summary"]
    assert summary["all"]["prompts"] == 2.0
