"""The ``dapo chat`` REPL: reads lines from an injectable ``read_line`` and renders with
rich: slash commands, streamed tokens, Ctrl-C stops a reply, EOF leaves. The conversation
itself is ``dapo_cli.chat.ChatSession``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dapo_cli.chat import MAX_SAMPLES, ChatSession, printable
from dapo_cli.errors import DapoError
from dapo_cli.tasks.base import extract_answer

PROMPT = "[bold green]you›[/] "

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
