"""`dapo chat`: talk to a model in the terminal, or answer one prompt for a script."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from dapo_cli.chat import ChatSession, ChatSettings, printable
from dapo_cli.cli.chat_repl import ChatRepl, default_reader
from dapo_cli.cli.common import (
    DtypeOption,
    PromptTemplateOption,
    console,
    err_console,
    fail,
    is_interactive,
    user_errors,
)
from dapo_cli.config import ModelConfig, prompt_template_problem
from dapo_cli.errors import DapoError

app = typer.Typer()

_SETTINGS = ("temperature", "top_p", "max_new_tokens", "seed", "system", "template", "window")

EXAMPLE = (
    "Example: dapo chat --model models/checkpoints/dapo_final --temperature 0.7 "
    "--max-new-tokens 128"
)


@app.command("chat", epilog=EXAMPLE)
@user_errors
def chat(  # long for its option declarations; the body is checks, load, then one of two modes
    model: Annotated[
        str | None,
        typer.Option(help="Model path or HF id; default: the embedded tiny model (tiny-1m)."),
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    prompt_template: PromptTemplateOption = None,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature (0 = greedy).")
    ] = ChatSettings.temperature,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = ChatSettings.top_p,
    max_new_tokens: Annotated[
        int, typer.Option(help="Reply length limit in tokens.")
    ] = ChatSettings.max_new_tokens,
    seed: Annotated[
        int | None,
        typer.Option(help="Sampling seed (generation n uses seed + n); default: random."),
    ] = None,
    dtype: DtypeOption = None,
    context_window: Annotated[
        int | None,
        typer.Option(
            help="Tokens the model sees, prompt + reply; default: the model's "
            "max_position_embeddings. Older turns are left out to fit.",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(help="Answer this one message and exit (for scripts).", show_default=False),
    ] = None,
    json_: Annotated[
        bool,
        typer.Option("--json", help="With --prompt: print one JSON object, nothing else."),
    ] = False,
    db_path: Annotated[
        Path | None,
        typer.Option(
            help="SQLite store for the interactions. Default: $DAPO_DB, else data/dapo.db.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Chat with a model: replies stream as they are generated, the conversation goes
    through the tokenizer's chat template (a plain transcript without one), and the oldest
    turns are left out when the context window is full (it says so).

    Commands: /help, /reset, /system TEXT, /temp X, /max N, /samples N (N answers side by
    side), /score [TASK] ANSWER (run the verifier on the last reply), /save FILE (.json or
    Markdown), /exit. Ctrl-C stops a reply; Ctrl-D or /exit leaves. Every exchange is
    stored in the `interactions` table (`dapo db export FILE --what interactions`).

    With the --system and --prompt-template the model was trained with, a first message
    reaches it exactly as a training prompt did (the template wraps every message you send).
    """
    settings = ChatSettings(temperature, top_p, max_new_tokens, seed)
    settings.check()
    if context_window is not None and context_window < 2:
        raise DapoError(f"--context-window must be at least 2, got {context_window}")
    if json_ and prompt is None:
        raise DapoError("--json needs --prompt TEXT (the REPL is for people)")
    if prompt is not None and not prompt.strip():
        raise DapoError("--prompt is empty")
    if problem := prompt_template_problem(prompt_template):
        raise DapoError(f"--prompt-template {problem}")

    from dapo_cli.cli.train import quiet_transformers
    from dapo_cli.models import DEFAULT_EMBEDDED_SIZE
    from dapo_cli.paths import resolve_db_path
    from dapo_cli.policy import load_policy
    from dapo_cli.store import Store

    quiet_transformers()
    store = Store(resolve_db_path(db_path))  # a bad --db-path fails before the model loads
    name = model or DEFAULT_EMBEDDED_SIZE
    dtype = dtype or ModelConfig.dtype
    try:
        if prompt is None and is_interactive():
            with console.status(f"loading {name}..."):
                policy = load_policy(model, dtype=dtype)
        else:
            policy = load_policy(model, dtype=dtype)
        session = ChatSession(
            policy, model_name=name, settings=settings, system=system, template=prompt_template,
            window=context_window, store=store,
        )  # fmt: skip
        if prompt is not None:
            _answer_once(session, prompt, json_)
        else:
            _banner(session)
            ChatRepl(session, console, default_reader(console)).run()
    finally:
        store.close()


def _answer_once(session: ChatSession, prompt: str, as_json: bool) -> None:
    """--prompt: the reply streamed to stdout (notices on stderr), or one JSON object."""

    def notice(text: str) -> None:
        err_console.print(Text(text, style="dim"), soft_wrap=True)

    if as_json:
        reply = session.respond(prompt, on_notice=notice)
        typer.echo(json.dumps({
            "prompt": prompt, "response": reply.text, "model": session.model_name,
            "session_id": session.session_id, "interaction_id": reply.interaction_id,
            "latency_s": round(reply.latency_s, 4), "prompt_tokens": reply.prompt_tokens,
            "response_tokens": reply.response_tokens, "finish_reason": reply.finish_reason,
            "trimmed_turns": reply.context.trimmed,
            "settings": {k: reply.params[k] for k in _SETTINGS if k in reply.params},
        }, ensure_ascii=False))  # fmt: skip
    else:
        show = printable if is_interactive() else str
        reply = session.respond(
            prompt, on_text=lambda piece: typer.echo(show(piece), nl=False), on_notice=notice
        )
        typer.echo()
    if reply.finish_reason == "interrupted":
        raise fail("interrupted", 130)


def _banner(session: ChatSession) -> None:
    from dapo_cli.models import has_chat_template

    fmt = "chat template" if has_chat_template(session.policy.tokenizer) else "plain transcript"
    console.print(
        Text.assemble(
            ("dapo chat", "bold"),
            f" · {session.model_name} · {fmt} · context {session.window} tokens · "
            f"session {session.session_id[:8]}",
        ),
        soft_wrap=True,
    )
    console.print(
        Text(
            "Type a message; /help lists the commands; /exit or Ctrl-D leaves, "
            "Ctrl-C stops a reply.",
            style="dim",
        ),
        soft_wrap=True,
    )
