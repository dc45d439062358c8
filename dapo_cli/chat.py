"""Chatting with a model: the conversation, its context, streamed replies and the REPL.

:class:`ChatSession` holds the conversation and generates on the rollout sampler (the same
KV-cache loop as training). Each reply sees the whole history: through the tokenizer's chat
template when it has one; otherwise as a plain transcript (earlier exchanges as
``User: ...`` / ``Assistant: ...`` blocks, then the latest message exactly as
``models.format_prompt`` gives a single prompt, which is what the model was trained on).
When the context would not leave ``max_new_tokens`` free in the model's window, the oldest
exchanges are left out (the system message always stays); a latest message that does not
fit even alone is cut from the left. Every reply is stored in the ``interactions`` table.

:class:`ChatRepl` reads lines from an injectable ``read_line`` and renders with rich: slash
commands, streamed tokens, Ctrl-C stops a reply, EOF leaves.

Importing this module does not import torch (the CLI's ``--version`` stays fast).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dapo_cli.errors import DapoError
from dapo_cli.records import atomic_file
from dapo_cli.rewards import known_task_types, score
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.base import Score, exact_match, extract_answer

if TYPE_CHECKING:
    from dapo_cli.policy import Policy
    from dapo_cli.rollout import Rollout
    from dapo_cli.store import Store

DEFAULT_WINDOW = 2048  # when neither the model config nor the tokenizer says
MAX_SAMPLES = 8
PROMPT = "[bold green]you›[/] "
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # all C0 controls but \t and \n, and DEL
_LABELS_LINE = re.compile(r"^Labels:\s*(.+?)\.?\s*$", re.MULTILINE)


@dataclass
class ChatSettings:
    """Sampling settings; ``temperature`` 0 means greedy, ``seed`` None a random one."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int | None = None

    def check(self, window: int | None = None) -> None:
        """Raise a DapoError naming the flag of the first bad value."""
        if self.temperature < 0:
            raise DapoError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature:g}")
        if not 0 < self.top_p <= 1:
            raise DapoError(f"--top-p must be in (0, 1], got {self.top_p:g}")
        if self.max_new_tokens < 1:
            raise DapoError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.seed is not None and self.seed < 0:
            raise DapoError(f"--seed must be >= 0, got {self.seed}")
        if window is not None and self.max_new_tokens >= window:
            raise DapoError(
                f"--max-new-tokens {self.max_new_tokens} leaves no room for the prompt in the "
                f"{window}-token context window"
            )


@dataclass
class Exchange:
    """One user message and the reply to it."""

    user: str
    assistant: str
    finish_reason: str = "stop"  # stop | length | interrupted
    response_tokens: int = 0
    latency_s: float = 0.0


@dataclass
class Context:
    """The token ids a reply is generated from, and what was left out to fit the window."""

    ids: list[int]
    trimmed: int = 0  # oldest exchanges left out
    cut_tokens: int = 0  # tokens cut from the left of the latest message


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    response_tokens: int  # generated tokens, a final stop token included
    latency_s: float
    finish_reason: str  # stop | length | interrupted
    seed: int
    context: Context
    interaction_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def context_window(model: Any, tokenizer: Any) -> int:
    """The model's window: ``config.max_position_embeddings``, else the tokenizer's
    ``model_max_length`` when it is a real limit, else 2048."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    m = getattr(tokenizer, "model_max_length", None)
    if isinstance(m, int) and 0 < m < 1_000_000:
        return m
    return DEFAULT_WINDOW


def plain_transcript(system: str | None, exchanges: Sequence[Exchange], user: str) -> str:
    """The context without a chat template: the system text, earlier exchanges as
    ``User: ...\\nAssistant: ...`` blocks, then ``user``, separated by blank lines. With no
    history this is exactly ``models.format_prompt(tokenizer, user, system)``."""
    parts = [system] if system is not None else []
    parts += [f"User: {ex.user}\nAssistant: {ex.assistant}" for ex in exchanges]
    parts.append(user)
    return "\n\n".join(parts)


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (model output may hold any byte)
    shown as U+FFFD; newlines and tabs kept."""
    return _CONTROL.sub("\ufffd", text)


class StreamDecoder:
    """Turns a growing list of token ids into new text pieces for ``on_text``: decodes all
    the ids so far and emits the new suffix (so multi-byte characters split across BPE
    tokens come out whole), holding back a trailing incomplete character."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.shown = ""

    def update(self, ids: Sequence[int]) -> None:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self._emit(text)

    def finish(self, text: str) -> None:
        self._emit(text)

    def _emit(self, text: str) -> None:
        common = 0  # decoding is prefix-stable but for held-back bytes; be safe anyway
        limit = min(len(text), len(self.shown))
        while common < limit and text[common] == self.shown[common]:
            common += 1
        piece = text[common:]
        self.shown = text
        if piece and self.on_text is not None:
            self.on_text(piece)


class ChatSession:
    """A conversation with ``policy``: history, settings, context building, generation,
    scoring of the last reply, transcripts; replies are logged to ``store`` when given."""

    def __init__(
        self,
        policy: Policy,
        *,
        model_name: str,
        settings: ChatSettings | None = None,
        system: str | None = None,
        window: int | None = None,
        store: Store | None = None,
        session_id: str | None = None,
    ):
        self.policy = policy
        self.model_name = model_name
        self.settings = settings or ChatSettings()
        self.system = system
        self.window = window or context_window(policy.model, policy.tokenizer)
        self.store = store
        self.session_id = session_id or uuid.uuid4().hex
        self.history: list[Exchange] = []
        self.base_seed = (
            self.settings.seed if self.settings.seed is not None else secrets.randbelow(2**31)
        )
        self.generations = 0  # each generation uses seed base_seed + generations
        self.settings.check(self.window)

    # ------------------------------------------------------------------------ context

    @property
    def budget(self) -> int:
        """Tokens the prompt may use: the window less the reply's room."""
        return self.window - self.settings.max_new_tokens

    def render(self, exchanges: Sequence[Exchange], user: str) -> str:
        """The text the model sees for ``user`` after ``exchanges``."""
        from dapo_cli.models import has_chat_template

        tokenizer = self.policy.tokenizer
        if not has_chat_template(tokenizer):
            return plain_transcript(self.system, exchanges, user)
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        for ex in exchanges:
            messages.append({"role": "user", "content": ex.user})
            messages.append({"role": "assistant", "content": ex.assistant})
        messages.append({"role": "user", "content": user})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return list(self.policy.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context(self, user: str, history: Sequence[Exchange] | None = None) -> Context:
        """The ids for a reply to ``user`` after ``history`` (default: the whole
        conversation), fitted to :attr:`budget`: oldest exchanges out first, then the
        latest message cut from the left; the system message always stays."""
        history = self.history if history is None else history
        budget = self.budget
        for start in range(len(history) + 1):
            ids = self.encode(self.render(history[start:], user))
            if len(ids) <= budget:
                return Context(ids, trimmed=start)
        message = self.encode(user)
        keep = budget - (len(ids) - len(message))  # room left by the template and system
        while keep > 0:
            text = self.policy.tokenizer.decode(message[-keep:])
            ids = self.encode(self.render([], text))
            if len(ids) <= budget:
                return Context(ids, trimmed=len(history), cut_tokens=len(message) - keep)
            keep -= len(ids) - budget
        # even the system message and template overflow: keep the last tokens as they are
        full = self.encode(self.render([], user))
        return Context(full[-budget:], trimmed=len(history), cut_tokens=len(full) - budget)

    # ---------------------------------------------------------------------- generation

    def _sample(
        self, ids: list[int], n: int, on_token: Callable[[Any], None] | None = None
    ) -> tuple[Rollout, int]:
        import torch

        from dapo_cli.rollout import Sampling, TorchSampler

        policy, s = self.policy, self.settings
        seed = self.base_seed + self.generations
        self.generations += 1
        greedy = s.temperature == 0
        sampling = Sampling(
            s.max_new_tokens, 1.0 if greedy else s.temperature, s.top_p, greedy=greedy
        )
        generator = torch.Generator(device=policy.device).manual_seed(seed)
        rollout = TorchSampler().sample(policy, [ids], n, sampling, generator, on_token)
        return rollout, seed

    def stream(
        self, ids: list[int], on_text: Callable[[str], None] | None = None
    ) -> tuple[str, int, str, int]:
        """Generate one reply to ``ids``, passing new text to ``on_text`` as it comes.
        A KeyboardInterrupt (Ctrl-C, or raised by ``on_text``) stops it and keeps the part
        generated so far. Returns (text, generated tokens, finish reason, seed)."""
        out: list[int] = []
        decoder = StreamDecoder(self.policy.tokenizer, on_text)
        seed = self.base_seed + self.generations

        def on_token(tok: Any) -> None:
            out.append(int(tok[0]))
            decoder.update(out)

        try:
            rollout, seed = self._sample(ids, 1, on_token)
            finish = "length" if bool(rollout.truncated[0]) else "stop"
        except KeyboardInterrupt:
            finish = "interrupted"
        text = self.policy.tokenizer.decode(out, skip_special_tokens=True)
        if finish != "interrupted":
            decoder.finish(text)
        return text, len(out), finish, seed

    def params(self, **extra: Any) -> dict[str, Any]:
        """The settings stored with an interaction."""
        return {**asdict(self.settings), "system": self.system, **extra}

    def respond(
        self,
        user: str,
        on_text: Callable[[str], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> Reply:
        """Answer ``user`` (streamed to ``on_text``), add the exchange to the history and
        store it. ``on_notice`` hears, before the reply, what was left out of the context."""
        ctx = self.context(user)
        if on_notice is not None:
            for notice in context_notices(ctx):
                on_notice(notice)
        start = time.perf_counter()
        text, n_tokens, finish, seed = self.stream(ctx.ids, on_text)
        latency = time.perf_counter() - start
        self.history.append(Exchange(user, text, finish, n_tokens, latency))
        params = self.params(
            seed=seed, finish_reason=finish, trimmed_turns=ctx.trimmed, window=self.window
        )
        reply = Reply(text, len(ctx.ids), n_tokens, latency, finish, seed, ctx, params=params)
        if self.store is not None:
            reply.interaction_id = self.store.log_interaction(
                user, text, model=self.model_name, session=self.session_id, params=params,
                latency_s=latency, prompt_tokens=len(ctx.ids), completion_tokens=n_tokens,
            )  # fmt: skip
        return reply

    def samples(self, n: int) -> tuple[list[str], list[int], list[bool]]:
        """``n`` fresh replies to the last user message (same context as its reply), in one
        batched generation: (texts, token counts, truncated flags). Not stored."""
        if not 1 <= n <= MAX_SAMPLES:
            raise DapoError(f"/samples takes 1 to {MAX_SAMPLES}, got {n}")
        if not self.history:
            raise DapoError("no message yet: /samples answers your last message again")
        ctx = self.context(self.history[-1].user, self.history[:-1])
        rollout, _ = self._sample(ctx.ids, n)
        texts = rollout.response_texts(self.policy.tokenizer)
        return texts, rollout.lengths.tolist(), rollout.truncated.tolist()

    # ------------------------------------------------------------------ scoring, saving

    def score_last(self, args: str) -> tuple[str, Score]:
        """Score the last reply: ``ANSWER`` by exact match of the extracted answer (the math
        verifier), ``TASK_TYPE ANSWER`` by that task type's verifier. Returns (how, score)."""
        usage = "usage: /score ANSWER or /score TASK_TYPE ANSWER (e.g. /score math 58)"
        words = args.split(maxsplit=1)
        if not words:
            raise DapoError(usage)
        if not self.history:
            raise DapoError("no reply to score yet")
        last = self.history[-1]
        if len(words) == 1 or words[0] not in known_task_types():
            return "exact match", exact_match(last.assistant, args.strip())
        task_type, answer = words[0], words[1].strip()
        verify: dict[str, Any] = {}
        labels = _LABELS_LINE.findall(last.user)
        if task_type == "classification" and labels:
            verify["labels"] = [label.strip() for label in labels[-1].split(",")]
        task = TASKS.get(task_type)
        problem = task.check_verify(verify) if task is not None else None
        if problem:
            raise DapoError(
                f"/score {task_type} needs the sample's verify data ({problem}), which a "
                "chat does not have; use /score ANSWER, or math, reasoning, classification"
            )
        sample = {"task_type": task_type, "prompt": last.user, "answer": answer, "verify": verify}
        return task_type, score(sample, last.assistant)

    def transcript(self) -> dict[str, Any]:
        turns: list[dict[str, Any]] = []
        for ex in self.history:
            turns.append({"role": "user", "content": ex.user})
            turns.append({"role": "assistant", "content": ex.assistant,
                          "finish_reason": ex.finish_reason, "tokens": ex.response_tokens,
                          "latency_s": round(ex.latency_s, 4)})  # fmt: skip
        return {
            "session_id": self.session_id,
            "model": self.model_name,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "system": self.system,
            "settings": {**asdict(self.settings), "seed": self.base_seed, "window": self.window},
            "turns": turns,
        }

    def save(self, path: Path) -> str:
        """Write the transcript to ``path`` atomically: JSON for ``.json``, else Markdown.
        Returns the format written."""
        data = self.transcript()
        if path.suffix.lower() == ".json":
            fmt, text = "JSON", json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        else:
            fmt, text = "Markdown", transcript_markdown(data)
        with atomic_file(path) as f:
            f.write(text.encode("utf-8"))
        return fmt


def context_notices(ctx: Context) -> list[str]:
    notes = []
    if ctx.trimmed:
        notes.append(f"(trimmed {ctx.trimmed} oldest turn(s) to fit the context window)")
    if ctx.cut_tokens:
        notes.append(
            f"(the message is too long for the context window: its first {ctx.cut_tokens} "
            "token(s) were cut)"
        )
    return notes


def transcript_markdown(data: dict[str, Any]) -> str:
    s = data["settings"]
    lines = [
        f"# Chat with {data['model']}",
        "",
        f"- session: `{data['session_id']}`, saved {data['saved_at']}",
        f"- temperature {s['temperature']:g}, top-p {s['top_p']:g}, "
        f"max new tokens {s['max_new_tokens']}, seed {s['seed']}",
        "",
    ]
    if data["system"] is not None:
        lines += ["## System", "", data["system"], ""]
    for turn in data["turns"]:
        title = "User" if turn["role"] == "user" else "Assistant"
        if turn.get("finish_reason") == "interrupted":
            title += " (stopped)"
        lines += [f"## {title}", "", turn["content"], ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- REPL

HELP = (
    ("/help", "this list and the current settings"),
    ("/reset", "forget the conversation (the system prompt and settings stay)"),
    ("/system [TEXT]", "set the system prompt; alone: show it; `/system none` removes it"),
    ("/temp X", "sampling temperature (0 = greedy)"),
    ("/max N", "reply length limit in tokens"),
    ("/samples [N]", f"N (default 3, at most {MAX_SAMPLES}) fresh answers to your last message"),
    ("/score [TASK] ANSWER", "check the last reply: exact match of its 'Answer:', or the "
                             "verifier of TASK (math, reasoning, classification)"),
    ("/save FILE", "save the transcript: .json, else Markdown"),
    ("/exit", "leave (also /quit, Ctrl-D); Ctrl-C stops a reply"),
    ("//text", "send a message that starts with '/'"),
)  # fmt: skip


def default_reader(console: Console) -> Callable[[str], str]:
    """``read_line(prompt)``: rich's input on a terminal, else a plain line from
    ``sys.stdin`` (EOFError at its end; echoed after the prompt), so tests and pipes can
    drive the REPL."""

    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())

    def read_line(prompt: str) -> str:
        if sys.stdin.isatty():
            return console.input(prompt)
        console.print(prompt, end="")
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        line = line.rstrip("\r\n")
        console.print(printable(line), markup=False, highlight=False)  # keep a readable log
        return line

    return read_line


class ChatRepl:
    """The interactive loop: a line is a message, or a slash command."""

    def __init__(
        self, session: ChatSession, console: Console, read_line: Callable[[str], str]
    ) -> None:
        self.session = session
        self.console = console
        self.read_line = read_line
        self.commands: dict[str, Callable[[str], bool | None]] = {
            "help": self.cmd_help, "reset": self.cmd_reset, "system": self.cmd_system,
            "temp": self.cmd_temp, "max": self.cmd_max, "samples": self.cmd_samples,
            "score": self.cmd_score, "save": self.cmd_save, "exit": self.cmd_exit,
            "quit": self.cmd_exit,
        }  # fmt: skip

    def say(self, text: str, style: str = "dim") -> None:
        self.console.print(Text(text, style=style), soft_wrap=True)

    def run(self) -> None:
        """Until /exit or EOF. Ctrl-C at the prompt only reminds how to leave."""
        while True:
            try:
                line = self.read_line(PROMPT).strip()
            except EOFError:
                self.console.print()
                return
            except KeyboardInterrupt:
                self.console.print()
                self.say("(use /exit or Ctrl-D to leave)")
                continue
            if not line:
                continue
            try:
                if line.startswith("/") and not line.startswith("//"):
                    if self.command(line) is False:
                        return
                else:
                    self.chat(line[1:] if line.startswith("//") else line)
            except KeyboardInterrupt:
                self.console.print()
                self.say("(stopped)")
            except DapoError as exc:
                self.say(str(exc), "yellow")

    def command(self, line: str) -> bool | None:
        name, _, args = line[1:].partition(" ")
        handler = self.commands.get(name.lower())
        if handler is None:
            self.say(f"unknown command /{name}; /help lists them", "yellow")
            return None
        return handler(args.strip())

    def chat(self, message: str) -> None:
        self.console.print(Text("model› ", style="bold cyan"), end="")
        reply = self.session.respond(
            message,
            on_text=lambda piece: self.console.print(
                printable(piece), end="", markup=False, highlight=False, soft_wrap=True
            ),
            on_notice=lambda note: self.say(note),
        )
        self.console.print()
        if reply.finish_reason == "interrupted":
            self.say("(stopped)")
            return
        rate = reply.response_tokens / reply.latency_s if reply.latency_s > 0 else 0.0
        info = f"({reply.response_tokens} tokens, {reply.latency_s:.2f} s, {rate:.0f} tok/s"
        if reply.finish_reason == "length":
            info += f"; hit the {self.session.settings.max_new_tokens}-token limit, see /max"
        self.say(info + ")")

    # --------------------------------------------------------------------- the commands

    def cmd_help(self, args: str) -> None:
        table = Table("command", "what it does", box=None, show_header=False)
        for name, what in HELP:
            table.add_row(Text(name, style="bold"), what)
        self.console.print(table)
        s, sess = self.session.settings, self.session
        self.say(
            f"temperature {s.temperature:g}, top-p {s.top_p:g}, max new tokens "
            f"{s.max_new_tokens}, seed {sess.base_seed}, context window {sess.window}, "
            f"system prompt: {'set' if sess.system is not None else 'none'}"
        )

    def cmd_reset(self, args: str) -> None:
        n = len(self.session.history)
        self.session.history.clear()
        self.say(f"(conversation reset: {n} exchange(s) forgotten)")

    def cmd_system(self, args: str) -> None:
        if not args:
            current = self.session.system
            self.say(f"system prompt: {current!r}" if current is not None else "no system prompt")
        elif args.lower() == "none":
            self.session.system = None
            self.say("(system prompt removed)")
        else:
            self.session.system = args
            self.say("(system prompt set)")

    def cmd_temp(self, args: str) -> None:
        try:
            value = float(args)
        except ValueError:
            self.say(f"usage: /temp X with X a number >= 0 (0 = greedy), got {args!r}", "yellow")
            return
        if not value >= 0:
            self.say(f"the temperature must be >= 0 (0 = greedy), got {args}", "yellow")
            return
        self.session.settings.temperature = value
        self.say(f"(temperature {value:g}{', greedy' if value == 0 else ''})")

    def cmd_max(self, args: str) -> None:
        window = self.session.window
        try:
            value = int(args)
        except ValueError:
            self.say(f"usage: /max N with N a whole number of tokens, got {args!r}", "yellow")
            return
        if not 1 <= value < window:
            self.say(f"/max takes 1 to {window - 1} (the context window is {window})", "yellow")
            return
        self.session.settings.max_new_tokens = value
        self.say(f"(replies stop after {value} tokens)")

    def cmd_samples(self, args: str) -> None:
        try:
            n = int(args) if args else 3
        except ValueError:
            self.say(f"usage: /samples N with N from 1 to {MAX_SAMPLES}, got {args!r}", "yellow")
            return
        texts, lengths, truncated = self.session.samples(n)
        last = self.session.history[-1].user
        title = f"{n} samples for: {last if len(last) <= 60 else last[:57] + '...'}"
        table = Table(title=printable(title), show_lines=True, expand=True)
        for i in range(n):
            table.add_column(f"#{i + 1}", overflow="fold", ratio=1)
        table.add_row(*(Text(printable(t)) for t in texts))
        table.add_row(
            *(Text(f"answer: {printable(str(extract_answer(t)))}", style="bold") for t in texts)
        )
        table.add_row(
            *(
                Text(f"{n_tok} tokens{' (limit)' if cut else ''}", style="dim")
                for n_tok, cut in zip(lengths, truncated, strict=True)
            )
        )
        self.console.print(table)
        if self.session.settings.temperature == 0:
            self.say("(temperature 0 is greedy: the samples are the same; /temp X to vary them)")

    def cmd_score(self, args: str) -> None:
        how, result = self.session.score_last(args)
        style = "bold green" if result.correct else "bold red"
        details = ", ".join(f"{k}={v!r}" for k, v in result.details.items()) or "-"
        line = Text(f"{how}: ")
        line.append(f"reward {result.reward:+g}, correct {result.correct}", style=style)
        line.append(f"  ({printable(details)})", style="dim")
        self.console.print(line, soft_wrap=True)

    def cmd_save(self, args: str) -> None:
        if not args:
            self.say("usage: /save FILE (.json for JSON, anything else for Markdown)", "yellow")
            return
        path = Path(args).expanduser()
        fmt = self.session.save(path)
        self.say(f"(saved {len(self.session.history)} exchange(s) as {fmt} to {path})")

    def cmd_exit(self, args: str) -> bool:
        return False
