"""One prompt template, applied the same way in training, sft, eval and chat: it wraps the
prompt (at its {prompt}, other braces kept as written) before the system prompt and the chat
template, so a model meets in chat the text it was trained on."""

import json

import pytest
from helpers import make_config
from typer.testing import CliRunner

from dapo_cli.chat import ChatSession, ChatSettings, Exchange
from dapo_cli.cli.app import app
from dapo_cli.config import load_config
from dapo_cli.errors import DapoError
from dapo_cli.models import format_prompt
from dapo_cli.policy import apply_template, load_policy
from dapo_cli.run import _warm_start_dir, build_run

TEMPLATE = "Solve this: {prompt}\nPut your final answer within \\boxed{}."
SYSTEM = "You are a careful assistant."
QUESTION = "What is 2 + 3?"


@pytest.fixture(scope="module")
def policy():
    return load_policy(None)


def test_the_template_keeps_every_other_brace_as_written(policy):
    prompt = "Simplify {x} + \\frac{1}{2}."
    assert apply_template(TEMPLATE, prompt) == (
        "Solve this: Simplify {x} + \\frac{1}{2}.\nPut your final answer within \\boxed{}."
    )
    policy.template = TEMPLATE
    try:
        text = policy.format_prompt(prompt)
    finally:
        policy.template = None
    assert apply_template(TEMPLATE, prompt) in text
    assert policy.tokenizer.decode(policy.tokenizer(text)["input_ids"]) == text
    # without a template nothing changes: the text is the chat template's alone
    assert policy.format_prompt(prompt) == format_prompt(policy.tokenizer, prompt)


@pytest.mark.parametrize("chat_template", [True, False])
def test_chat_and_training_see_the_same_text_for_a_first_message(chat_template):
    policy = load_policy(None)
    if not chat_template:
        policy.tokenizer.chat_template = None
    policy.system, policy.template = SYSTEM, TEMPLATE
    session = ChatSession(policy, model_name="tiny-1m", settings=ChatSettings(seed=0),
                          system=SYSTEM, template=TEMPLATE)  # fmt: skip
    text = policy.format_prompt(QUESTION)
    assert session.render([], QUESTION) == text
    assert apply_template(TEMPLATE, QUESTION) in text
    if not chat_template:
        assert text == f"{SYSTEM}\n\n{apply_template(TEMPLATE, QUESTION)}"
    later = session.render([Exchange(QUESTION, "5")], "And 4 + 4?")  # every message is wrapped
    assert apply_template(TEMPLATE, QUESTION) in later
    assert apply_template(TEMPLATE, "And 4 + 4?") in later


def test_training_prompts_carry_the_configured_template(tmp_path, data_file):
    run = build_run(make_config(tmp_path, data_file, f"data.prompt_template={TEMPLATE}"))
    (ids,) = run.policy.prompts_ids([QUESTION])
    assert apply_template(TEMPLATE, QUESTION) in run.policy.tokenizer.decode(ids)
    assert run.step()["accuracy"] >= 0  # the step runs on those prompts
    saved = load_config(tmp_path / "ck" / "config.yaml")  # what --resume reads back
    assert saved.data.prompt_template == TEMPLATE


def test_the_warm_start_cache_key_changes_only_with_a_template(tmp_path, data_file):
    samples = [{"id": "a"}, {"id": "b"}]
    plain = _warm_start_dir(load_config(), samples)
    assert _warm_start_dir(load_config(None, ["data.prompt_template="]), samples) == plain
    templated = load_config(None, [f"data.prompt_template={TEMPLATE}"])
    assert _warm_start_dir(templated, samples) != plain


@pytest.mark.parametrize(
    "template", ["Answer this question.", "{prompt} or {prompt}", "{ prompt }"]
)
def test_a_template_without_one_placeholder_is_one_config_error(template):
    with pytest.raises(DapoError, match=r"^config: data.prompt_template must contain \{prompt\}"):
        load_config(None, [f"data.prompt_template={template}"])


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--steps", "1"],
        ["sft", "--data", "{data}", "--output", "{tmp}/sft"],
        ["eval", "--model", "no/such-model", "--data", "{data}"],
        ["chat", "--model", "no/such-model", "--prompt", "hi"],
    ],
)
def test_a_bad_template_on_any_command_is_one_line_before_any_work(tmp_path, data_file, command):
    argv = [a.format(data=data_file, tmp=tmp_path) for a in command]
    db = tmp_path / "d.db"
    result = CliRunner().invoke(app, [
        *argv, "--prompt-template", "Put your answer in \\boxed{}.", "--db-path", str(db),
    ])  # fmt: skip
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "must contain {prompt} exactly once" in lines[0]
    assert not db.exists() and not (tmp_path / "sft").exists()  # nothing started


def test_sft_eval_and_chat_take_the_template_on_the_command_line(tmp_path, data_file, policy):
    db = str(tmp_path / "d.db")
    sft = CliRunner().invoke(app, [
        "sft", "--data", str(data_file), "--steps", "2", "--batch-size", "4", "--output",
        str(tmp_path / "sft"), "--db-path", db, "--prompt-template", TEMPLATE,
    ])  # fmt: skip
    assert sft.exit_code == 0, sft.output
    evaluated = CliRunner().invoke(app, [
        "eval", "--model", str(tmp_path / "sft"), "--data", str(data_file), "--split", "train",
        "--k", "1", "--limit", "2", "--db-path", db, "--prompt-template", TEMPLATE, "--json",
    ])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["settings"]["template"] == TEMPLATE
    plain = CliRunner().invoke(app, [
        "eval", "--model", str(tmp_path / "sft"), "--data", str(data_file), "--split", "train",
        "--k", "1", "--limit", "2", "--db-path", db, "--json",
    ])  # fmt: skip
    assert "template" not in json.loads(plain.stdout)["settings"]  # recorded only when set
    chatted = CliRunner().invoke(app, [
        "chat", "--prompt", QUESTION, "--prompt-template", TEMPLATE, "--max-new-tokens", "2",
        "--seed", "0", "--json", "--db-path", db,
    ])  # fmt: skip
    assert chatted.exit_code == 0, chatted.output
    reply = json.loads(chatted.stdout)
    assert reply["settings"]["template"] == TEMPLATE and reply["prompt"] == QUESTION
    policy.template = TEMPLATE
    try:
        assert reply["prompt_tokens"] == policy.prompt_length(QUESTION)  # training's text
    finally:
        policy.template = None
