"""One system prompt, applied the same way in training, sft, eval and chat: through the chat
template when the tokenizer has one, else above the prompt."""

import json

import pytest
from helpers import make_config
from typer.testing import CliRunner

from dapo_cli.chat import ChatSession, ChatSettings
from dapo_cli.cli.app import app
from dapo_cli.config import load_config
from dapo_cli.policy import load_policy
from dapo_cli.run import build_run

SYSTEM = "You are a careful assistant. End with 'Answer: N'."


@pytest.mark.parametrize("template", [True, False])
def test_chat_and_training_see_the_same_text_for_a_first_message(template):
    policy = load_policy(None)
    if not template:
        policy.tokenizer.chat_template = None
    policy.system = SYSTEM
    session = ChatSession(policy, model_name="tiny-1m", settings=ChatSettings(seed=0),
                          system=SYSTEM)  # fmt: skip
    text = policy.format_prompt("What is 2 + 3?")
    assert session.render([], "What is 2 + 3?") == text
    assert SYSTEM in text
    if template:
        assert text.index(SYSTEM) < text.index("What is 2 + 3?")
    else:
        assert text == f"{SYSTEM}\n\nWhat is 2 + 3?"


def test_training_prompts_carry_the_configured_system_prompt(tmp_path, data_file):
    run = build_run(make_config(tmp_path, data_file, f"data.system_prompt={SYSTEM}"))
    (ids,) = run.policy.prompts_ids(["What is 2 + 3?"])
    assert SYSTEM in run.policy.tokenizer.decode(ids)
    assert run.step()["accuracy"] >= 0  # the step runs on those prompts
    saved = load_config(tmp_path / "ck" / "config.yaml")  # what --resume reads back
    assert saved.data.system_prompt == SYSTEM


def test_train_sft_and_eval_take_system_on_the_command_line(tmp_path, data_file):
    db = str(tmp_path / "d.db")
    sft = CliRunner().invoke(app, [
        "sft", "--data", str(data_file), "--steps", "2", "--batch-size", "4", "--output",
        str(tmp_path / "sft"), "--db-path", db, "--system", SYSTEM,
    ])  # fmt: skip
    assert sft.exit_code == 0, sft.output
    evaluated = CliRunner().invoke(app, [
        "eval", "--model", str(tmp_path / "sft"), "--data", str(data_file), "--split", "train",
        "--k", "1", "--limit", "2", "--db-path", db, "--system", SYSTEM, "--json",
    ])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["settings"]["system"] == SYSTEM
    bad = CliRunner().invoke(app, ["train", "--system", SYSTEM, "--set", "train.lrr=1"])
    assert bad.exit_code == 1  # the flag parses; the bad key is the one error
