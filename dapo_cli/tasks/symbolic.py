"""Symbolic equivalence of two LaTeX answers (``2\\sqrt{3}`` = ``\\sqrt{12}``) by math-verify,
bounded so that no answer a model writes can hang or crash scoring.

math-verify (on sympy) is what reads LaTeX answers well; its own timeouts use
``signal.alarm``, which works in the main thread only, and ``rewards.score_batch`` scores in
threads. A thread cannot be stopped, and sympy on a hostile answer (``9^{9^{9}}``,
``(10^{10})!``) computes for minutes inside one C call, holding the GIL. So:

1. :func:`screen` refuses, without sympy, what is known to be hostile: long answers,
   exponent towers, huge exponents, factorials of big numbers, very long numbers;
2. the rest is checked in a worker process (:func:`_serve`: math-verify with its signal
   timeouts off, in 2 GiB of address space), which the caller kills and replaces past
   :data:`SECONDS`; the worker's own alarm ends it a second later in any case, so it
   cannot outlive a trainer that died.

Measured on a 2-core machine, 1000 MATH-like answers against LaTeX references: 13.2 s with
math-verify in the scoring thread (unbounded), 12.7 s through one worker, 8.3 s through the
pool of four (processes escape the GIL); ~0.4 s to start a worker, once. The process costs
nothing measurable next to sympy's parsing, and it is the only bound that holds inside a C
call. Number references never come here: 1000 completions with integer references score
in ~35 ms (:mod:`dapo_cli.tasks.answers` decides them exactly, without sympy).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from functools import lru_cache

from dapo_cli.errors import DapoError

SECONDS = 2.0  # wall-clock limit of one comparison; math-verify's own default is 5 s
START_SECONDS = 60.0  # a worker's start-up (importing sympy) on a loaded machine
MAX_CHARS = 300  # no reference of MATH or DAPO-Math-17k is this long
MAX_WORKERS = 4  # as many as score_batch's threads; ~70 MB each
_MEMORY_BYTES = 2 << 30  # a worker's address space: it needs ~75 MB, huge integers more

_DIGITS = re.compile(r"[0-9]{101,}")
_BIG_FACTORIAL = re.compile(r"(?:[0-9]{4,}|[)}\]])\s*!")


class SymbolicUnavailable(DapoError):
    """The math-verify worker cannot start here (math-verify not installed?)."""


def screen(text: str) -> str | None:
    """Why ``text`` is refused before sympy sees it; None when it may be compared."""
    if len(text) > MAX_CHARS:
        return f"longer than {MAX_CHARS} characters"
    if _DIGITS.search(text):
        return "a number of more than 100 digits"
    if _BIG_FACTORIAL.search(text):
        return "a factorial of a big number or of an expression"
    return _exponent_problem(text.replace("**", "^"))


def _exponent_problem(text: str) -> str | None:
    """An exponent that holds an exponent (``9^{9^9}``), follows one (``9^9^9``) or has
    more than four digits (``2^{100000}``): each an integer too big to write."""
    i = text.find("^")
    while i >= 0:
        start = i + 1
        while start < len(text) and text[start] == " ":
            start += 1
        end = _group_end(text, start)
        exponent = text[start:end]
        if "^" in exponent or text[end:].lstrip().startswith("^"):
            return "an exponent tower"
        if re.search(r"[0-9]{5,}", exponent):
            return "an exponent of more than four digits"
        i = text.find("^", start)
    return None


def _group_end(text: str, start: int) -> int:
    """The end of the exponent starting at ``start``: a balanced {...} or (...), a LaTeX
    command, a run of digits or letters, or one character."""
    if start >= len(text):
        return start
    close = {"{": "}", "(": ")"}.get(text[start])
    if close:
        depth = 0
        for j in range(start, len(text)):
            depth += (text[j] == text[start]) - (text[j] == close)
            if depth == 0:
                return j + 1
        return len(text)
    run = re.match(r"\\[A-Za-z]+|[0-9.]+|[A-Za-z]+", text[start:])
    return start + (run.end() if run else 1)


def equivalent(answer: str, reference: str) -> bool:
    """Whether math-verify finds ``answer`` equal to ``reference`` (both LaTeX without
    ``$``). False when either is refused by :func:`screen` or the check runs past
    :data:`SECONDS`. Safe from any thread; raises only :class:`SymbolicUnavailable`."""
    if screen(answer) or screen(reference):
        return False
    return _compare(answer, reference)


@lru_cache(maxsize=4096)  # the responses of a group often repeat one answer
def _compare(answer: str, reference: str) -> bool:
    with _slots:
        worker = _take()
        verdict = worker.ask(answer, reference)
        if verdict is None:  # too slow or died: its state is unknown, so it goes
            worker.close()
            return False
        with _lock:
            _idle.append(worker)
        return verdict


# ------------------------------------------------------------------------ the worker pool

_slots = threading.BoundedSemaphore(MAX_WORKERS)
_lock = threading.Lock()
_idle: list[_Worker] = []
_started: list[_Worker] = []  # every worker not yet closed, to close at exit


def _take() -> _Worker:
    with _lock:
        if _idle:
            return _idle.pop()
    return _Worker()


class _Worker:
    """One worker process (:func:`_serve`): a JSON line in (answer, reference), ``1`` or
    ``0`` out."""

    def __init__(self) -> None:
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from dapo_cli.tasks.symbolic import _serve; _serve()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as exc:
            raise SymbolicUnavailable(f"cannot start the math-verify worker: {exc}") from None
        self._buffer = b""
        ready = self._line(START_SECONDS)
        if ready != "ready":
            self.close()
            why = ready or "no answer"
            raise SymbolicUnavailable(
                f"the math-verify worker did not start ({why}); pip install 'math-verify>=0.9'"
            )
        with _lock:
            _started.append(self)

    def ask(self, answer: str, reference: str) -> bool | None:
        """The worker's verdict, or None when it took longer than :data:`SECONDS` or died."""
        try:  # ASCII JSON: a lone surrogate travels as an escape, never as bad bytes
            self.proc.stdin.write(json.dumps([answer, reference]).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        line = self._line(SECONDS)
        return None if line not in ("0", "1") else line == "1"

    def _line(self, seconds: float) -> str | None:
        """The next line from the worker, None past ``seconds`` or at its end."""
        deadline = time.monotonic() + seconds
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("ascii", "replace").strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()
        with _lock:
            if self in _started:
                _started.remove(self)


@atexit.register
def _close_all() -> None:
    for worker in list(_started):
        worker.close()


# ----------------------------------------------------------------------- inside the worker


def _serve() -> None:
    """The worker's loop: one comparison per line of stdin until it closes."""
    import resource
    import signal

    # Ctrl-C and a scheduler's SIGTERM reach the whole process group; the trainer finishes
    # its step on the first one, so its workers must keep answering. A worker ends when the
    # trainer closes its stdin (or exits), or by its alarm.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # a runaway integer fails with MemoryError instead of taking the machine's memory
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_BYTES, _MEMORY_BYTES))
    try:
        import logging

        from math_verify import parse, verify

        logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled"
    except Exception as exc:  # noqa: BLE001 - told to the parent in one line
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], flush=True)
        return
    # stdout carries only verdicts: whatever a library prints goes to stderr (discarded)
    verdicts, sys.stdout = sys.stdout, sys.stderr
    print("ready", file=verdicts, flush=True)
    for line in sys.stdin:
        # SIGALRM's default action ends the process even inside a C call: the bound when
        # the parent is gone and cannot kill us
        signal.alarm(int(SECONDS) + 1)
        try:
            answer, reference = json.loads(line)
            # timeouts None: math-verify's signal.alarm would replace ours
            gold = parse(f"${reference}$", parsing_timeout=None)
            target = parse(f"${answer}$", parsing_timeout=None)
            same = bool(gold and target and verify(gold, target, timeout_seconds=None))
        except Exception:  # noqa: BLE001 - whatever sympy raises, the answer is not equal
            same = False
        signal.alarm(0)
        print("1" if same else "0", file=verdicts, flush=True)
