"""Chatting with a model: the conversation, its context, streamed replies and the REPL.

:class:`ChatSession` holds the conversation and generates on the rollout sampler (the same
KV-cache loop as training). Each reply sees the whole history: through the tokenizer's chat
template when it has one; otherwise as a plain transcript (earlier exchanges as
``User: ...`` / ``Assistant: ...`` blocks, then the latest message exactly as
``models.format_prompt`` gives a single prompt, which is what the model was trained on).
A prompt template (``--prompt-template``, training's ``data.prompt_template``) wraps every
user message in the context, earlier ones too, so a first message reaches the model exactly
as a training prompt did; the history, transcripts and the store keep messages as typed.
When the context would not leave ``max_new_tokens`` free in the model's window, the oldest
exchanges are left out (the system message always stays); a latest message that does not
fit even alone is cut from the left. Every reply is stored in the ``interactions`` table.
The interactive loop that renders it is ``cli/chat_repl.py``.

Importing this module does not import torch (the CLI's ``--version`` stays fast).
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dapo_cli.config import prompt_template_problem
from dapo_cli.errors import DapoError
from dapo_cli.records import atomic_file
from dapo_cli.rewards import known_task_types, score
from dapo_cli.tasks import TASKS
from dapo_cli.tasks.base import Score, exact_match

if TYPE_CHECKING:
    from dapo_cli.policy import Policy
    from dapo_cli.rollout import Rollout
    from dapo_cli.store import Store

DEFAULT_WINDOW = 2048  # when neither the model config nor the tokenizer says
MAX_SAMPLES = 8
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
        """Raise a DapoError naming the first bad setting (each is also a ``dapo chat`` flag)."""
        if self.temperature < 0:
            raise DapoError(f"temperature must be >= 0 (0 = greedy), got {self.temperature:g}")
        if not 0 < self.top_p <= 1:
            raise DapoError(f"top_p must be in (0, 1], got {self.top_p:g}")
        if self.max_new_tokens < 1:
            raise DapoError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.seed is not None and self.seed < 0:
            raise DapoError(f"seed must be >= 0, got {self.seed}")
        if window is not None and self.max_new_tokens >= window:
            raise DapoError(
                f"max_new_tokens {self.max_new_tokens} leaves no room for the prompt in the "
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
        template: str | None = None,
        window: int | None = None,
        store: Store | None = None,
        session_id: str | None = None,
    ):
        if problem := prompt_template_problem(template):
            raise DapoError(f"--prompt-template {problem}")
        self.policy = policy
        self.model_name = model_name
        self.settings = settings or ChatSettings()
        self.system = system
        self.template = template  # wraps every user message, as data.prompt_template did
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
        """The text the model sees for ``user`` after ``exchanges``: every user message in
        the prompt template when there is one."""
        from dapo_cli.models import has_chat_template
        from dapo_cli.policy import apply_template

        if self.template is not None:
            wrap = self.template
            exchanges = [replace(ex, user=apply_template(wrap, ex.user)) for ex in exchanges]
            user = apply_template(wrap, user)
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
        """The settings stored with an interaction (the prompt template when there is one)."""
        template = {"template": self.template} if self.template is not None else {}
        return {**asdict(self.settings), "system": self.system, **template, **extra}

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
            **({"template": self.template} if self.template is not None else {}),
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
    if data.get("template") is not None:
        lines += ["## Prompt template", "", data["template"], ""]
    for turn in data["turns"]:
        title = "User" if turn["role"] == "user" else "Assistant"
        if turn.get("finish_reason") == "interrupted":
            title += " (stopped)"
        lines += [f"## {title}", "", turn["content"], ""]
    return "\n".join(lines)
