"""`dapo chat`: one-shot answers for scripts, the REPL driven through its input stream, the
context window, Ctrl-C during a reply, transcripts, scoring by hand, and what is stored."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dapo_cli.chat import (
    ChatSession,
    ChatSettings,
    Exchange,
    StreamDecoder,
    plain_transcript,
)
from dapo_cli.cli.app import app
from dapo_cli.cli.chat_repl import ChatRepl
from dapo_cli.errors import DapoError
from dapo_cli.store import Store

MATH = "Evaluate 41 + 17. Give your final answer after 'Answer:'."
runner = CliRunner()


def dapo(*args: object, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


@pytest.fixture(scope="module")
def policy():
    from dapo_cli.policy import load_policy

    return load_policy(None)  # the embedded tiny model, built once per test session


def session_for(policy, **settings) -> ChatSession:
    window = settings.pop("window", None)
    system = settings.pop("system", None)
    return ChatSession(
        policy,
        model_name="tiny-1m",
        settings=ChatSettings(**{"max_new_tokens": 8, "seed": 0, **settings}),
        window=window,
        system=system,
    )


def scripted(lines: list[str | BaseException]):
    """A read_line that plays ``lines`` (raising the exceptions among them), then EOF."""
    queue = list(lines)

    def read_line(prompt: str) -> str:
        if not queue:
            raise EOFError
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    return read_line


# ----------------------------------------------------------------------- --prompt, --json


def test_prompt_json_prints_one_object_and_stores_it(tmp_path):
    db = tmp_path / "chat.db"
    args = ("chat", "--prompt", MATH, "--max-new-tokens", 8, "--seed", 3, "--db-path", db)
    result = dapo(*args, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # stdout holds the JSON object and nothing else
    assert out["prompt"] == MATH and out["model"] == "tiny-1m"
    assert 1 <= out["response_tokens"] <= 8 and out["prompt_tokens"] > 10
    assert out["finish_reason"] in ("stop", "length") and out["latency_s"] >= 0
    assert out["settings"]["temperature"] == 0.7 and out["settings"]["seed"] == 3
    [row] = Store(db, create=False).export_interactions()
    assert row["id"] == out["interaction_id"] and row["session"] == out["session_id"]
    assert (row["prompt"], row["response"], row["model"]) == (MATH, out["response"], "tiny-1m")
    assert row["completion_tokens"] == out["response_tokens"]
    assert row["prompt_tokens"] == out["prompt_tokens"] and row["params"]["max_new_tokens"] == 8
    # the same seed gives the same reply, streamed to stdout without --json
    plain = dapo(*args)
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == out["response"] + "\n"
    assert len(Store(db, create=False).export_interactions()) == 2


def test_db_export_round_trips_the_interactions(tmp_path):
    db, out = tmp_path / "chat.db", tmp_path / "chats.jsonl"
    for seed in (0, 1):
        dapo("chat", "--prompt", MATH, "--max-new-tokens", 4, "--seed", seed, "--db-path", db)
    result = dapo("db", "export", out, "--what", "interactions", "--db-path", db)
    assert result.exit_code == 0 and "2 interactions written" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == Store(db, create=False).export_interactions()
    assert [r["params"]["seed"] for r in rows] == [0, 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "does not exist"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--seed", "-2"], "seed must be >= 0"),
        (["--max-new-tokens", "1024"], "leaves no room for the prompt"),
        (["--context-window", "1"], "--context-window must be at least 2"),
        (["--prompt", " "], "--prompt is empty"),
        (["--json"], "--json needs --prompt"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, args, message):
    base = ["chat", "--db-path", str(tmp_path / "d.db")]
    if "--prompt" not in args and "--json" not in args:
        base += ["--prompt", "hi"]
    result = dapo(*base, *args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------- the REPL


def test_repl_through_its_input_stream(tmp_path):
    md, js, db = tmp_path / "t.md", tmp_path / "out" / "t.json", tmp_path / "chat.db"
    script = [
        MATH, "/temp 0.5", "/max 6", "And 2 + 2?", "/samples 3", "/score 58", "/score math 58",
        "/score code f", "/score", "/system Be brief.", "/system", f"/save {md}", f"/save {js}",
        "/save", "/temp abc", "/max 0", "/samples 99", "/foo", "/reset", "/samples", "/exit",
        "never sent",
    ]  # fmt: skip
    result = dapo(
        "chat", "--max-new-tokens", 8, "--seed", 0, "--db-path", db, input="\n".join(script)
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in (
        "dapo chat · tiny-1m · chat template · context 1024 tokens",
        "you› " + MATH,  # the line read is echoed when stdin is not a terminal
        "(temperature 0.5)",
        "(replies stop after 6 tokens)",
        "3 samples for: And 2 + 2?",
        "answer: ",
        "exact match: reward -1, correct False",
        "math: reward -1, correct False",
        "/score code needs the sample's verify data",
        "usage: /score ANSWER or /score TASK_TYPE ANSWER",
        "(system prompt set)",
        "system prompt: 'Be brief.'",
        "(saved 2 exchange(s) as Markdown",
        "(saved 2 exchange(s) as JSON",
        "usage: /save FILE",
        "usage: /temp X",
        "/max takes 1 to 1023",
        "/samples takes 1 to 8, got 99",
        "unknown command /foo; /help lists them",
        "(conversation reset: 2 exchange(s) forgotten)",
        "no message yet: /samples",
    ):
        assert expected in out, (expected, out)
    text = md.read_text()
    assert text.count("## User") == 2 and text.count("## Assistant") == 2 and MATH in text
    saved = json.loads(js.read_text())
    assert [t["role"] for t in saved["turns"]] == ["user", "assistant"] * 2
    assert saved["turns"][2]["content"] == "And 2 + 2?" and saved["turns"][3]["tokens"] <= 6
    assert saved["settings"]["temperature"] == 0.5 and saved["settings"]["max_new_tokens"] == 6
    rows = Store(db, create=False).export_interactions()
    assert [r["prompt"] for r in rows] == [MATH, "And 2 + 2?"]  # /samples are not stored
    assert len({r["session"] for r in rows}) == 1 and rows[0]["session"]
    assert rows[0]["params"]["temperature"] == 0.7 and rows[1]["params"]["temperature"] == 0.5
    assert rows[1]["completion_tokens"] <= 6 and rows[1]["params"]["max_new_tokens"] == 6
    assert all(r["latency_s"] >= 0 and r["prompt_tokens"] > 0 for r in rows)
    assert rows[1]["prompt_tokens"] > rows[0]["prompt_tokens"]  # the history is in the context


def test_end_of_input_leaves_cleanly(tmp_path):
    db = tmp_path / "chat.db"
    result = dapo("chat", "--max-new-tokens", 4, "--db-path", db, input="hello\n")
    assert result.exit_code == 0, result.output
    assert len(Store(db, create=False).export_interactions()) == 1


def test_a_full_context_window_drops_the_oldest_turns(tmp_path):
    long = " ".join(["seven plus eight"] * 4)
    huge = " ".join(["nine"] * 200)
    script = [f"first {long}", f"second {long}", f"third {long}", huge]
    result = dapo(
        "chat", "--context-window", 64, "--max-new-tokens", 8, "--system", "Be brief.",
        "--db-path", tmp_path / "d.db", input="\n".join(script),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "oldest turn(s) to fit the context window)" in result.stdout
    assert "the message is too long for the context window" in result.stdout
    rows = Store(tmp_path / "d.db", create=False).export_interactions()
    assert len(rows) == 4 and all(r["prompt_tokens"] <= 64 - 8 for r in rows)
    assert rows[2]["params"]["trimmed_turns"] >= 1


def test_context_keeps_the_system_message_and_the_newest_turns(policy):
    session = session_for(policy, window=160, system="SYSTEM RULES")
    session.history = [Exchange(f"question {i} " * 5, f"reply {i} " * 5) for i in range(6)]
    ctx = session.context("the newest question")
    assert 0 < ctx.trimmed < 6 and len(ctx.ids) <= session.budget and ctx.cut_tokens == 0
    text = policy.tokenizer.decode(ctx.ids)
    assert text.startswith("<|im_start|>system\nSYSTEM RULES")
    assert "reply 5" in text and "question 0" not in text
    assert text.endswith("the newest question<|im_end|>\n<|im_start|>assistant\n")
    cut = session.context("word " * 300)
    assert cut.trimmed == 6 and cut.cut_tokens > 0 and len(cut.ids) <= session.budget
    assert policy.tokenizer.decode(cut.ids).startswith("<|im_start|>system\nSYSTEM RULES")


def test_plain_transcript_without_a_chat_template(policy):
    from dapo_cli.models import format_prompt

    assert plain_transcript(None, [], "Q?") == "Q?"
    history = [Exchange("2+2?", "Answer: 4")]
    expected = "Sys\n\nUser: 2+2?\nAssistant: Answer: 4\n\n3+3?"
    assert plain_transcript("Sys", history, "3+3?") == expected
    template = policy.tokenizer.chat_template
    try:
        policy.tokenizer.chat_template = None
        session = session_for(policy, system="Sys")
        assert session.render([], "Q?") == format_prompt(policy.tokenizer, "Q?", "Sys")
        assert session.render(history, "3+3?").endswith("Answer: 4\n\n3+3?")
    finally:
        policy.tokenizer.chat_template = template


# ------------------------------------------------------------------ streaming and Ctrl-C


def test_stream_decoder_emits_whole_characters(policy):
    tok = policy.tokenizer
    text = "héllo wörld ✓ 41 + 17 = 58"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces: list[str] = []
    decoder = StreamDecoder(tok, pieces.append)
    for i in range(1, len(ids) + 1):
        decoder.update(ids[:i])
    decoder.finish(tok.decode(ids))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_ctrl_c_in_a_reply_keeps_the_part_so_far(policy):
    session = session_for(policy, max_new_tokens=40, temperature=1.5, seed=5)
    pieces: list[str] = []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            raise KeyboardInterrupt

    reply = session.respond("tell me a long story", on_text=on_text)
    assert reply.finish_reason == "interrupted" and 3 <= reply.response_tokens < 40
    assert reply.text.startswith("".join(pieces)) and reply.text
    assert session.history[-1].assistant == reply.text
    again = session.respond("and another", on_text=pieces.append)  # the session goes on
    assert again.finish_reason in ("stop", "length") and len(session.history) == 2


class InterruptingFile(io.StringIO):
    """A terminal whose n-th write raises KeyboardInterrupt (a Ctrl-C while printing)."""

    def __init__(self, at: int):
        super().__init__()
        self.writes, self.at = 0, at

    def write(self, s: str) -> int:
        self.writes += 1
        if self.writes == self.at:
            raise KeyboardInterrupt
        return super().write(s)


def test_repl_ctrl_c_stops_the_reply_and_the_prompt_only_hints(policy):
    session = session_for(policy, max_new_tokens=40, temperature=1.5, seed=5)
    file = InterruptingFile(at=6)  # 1-2: the hint, 3: "model› ", 4-5: text, 6: Ctrl-C
    console = Console(file=file, width=100)
    read_line = scripted([KeyboardInterrupt(), "a long story please", "again", "/exit"])
    ChatRepl(session, console, read_line).run()
    out = file.getvalue()
    assert "(use /exit or Ctrl-D to leave)" in out and "(stopped)" in out
    first, second = session.history
    assert first.finish_reason == "interrupted" and 1 <= first.response_tokens < 40
    assert second.finish_reason in ("stop", "length")


# ---------------------------------------------------------------------------- /score


def test_score_by_hand(policy):
    session = session_for(policy)
    with pytest.raises(DapoError, match="no reply to score yet"):
        session.score_last("58")
    prompt = "Is it good?\nText: I love it\nLabels: positive, negative.\nAnswer with the label."
    session.history = [Exchange(prompt, "I think... Answer: Positive")]
    assert session.score_last("positive")[1].correct
    how, result = session.score_last("classification positive")
    assert how == "classification" and result.correct and result.reward == 1.0
    assert not session.score_last("classification negative")[1].correct
    session.history = [Exchange(MATH, "41 + 17 = 58. Answer: 58")]
    how, result = session.score_last("math 58")
    assert (how, result.correct, result.details["extracted"]) == ("math", True, "58")
    assert session.score_last("59")[1].reward == -1.0
    with pytest.raises(DapoError, match="needs the sample's verify data"):
        session.score_last("creative anything")
    with pytest.raises(DapoError, match="needs the sample's verify data"):
        session.score_last("classification positive")  # no 'Labels:' line in the prompt
