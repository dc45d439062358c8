"""Shared test setup: built models go to a per-session folder, never into ./models."""

import json
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def dapo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("dapo_home")
    old = os.environ.get("DAPO_HOME")
    os.environ["DAPO_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("DAPO_HOME", None)
    else:
        os.environ["DAPO_HOME"] = old


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """40 training prompts of the task type ``test-parity`` (registered by test_train: an
    even-length response is correct), so every group has signal with good odds."""
    path = tmp_path_factory.mktemp("data") / "parity.jsonl"
    rows = [
        {"task_type": "test-parity", "prompt": f"Tell me about the number {i}.", "answer": "x",
         "split": "train"}
        for i in range(40)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
