"""A reward function of the user's, named on the command line: ``--reward path/to/file.py:fn``
or ``--reward package.module:fn``.

It is called in batches, the way TRL calls its reward functions::

    fn(prompts=[...], completions=[...], answer=[...], task_type=[...], id=[...], ...)

one list entry per completion (every field of the completion's sample as a keyword column),
and returns one entry per completion: a float (the reward; ``correct`` is then reward > 0,
what dynamic sampling needs to tell a group's responses apart), or a pair (reward, correct).
User code is trusted: it runs in this process, not in the sandbox (code-execution rewards of
the built-in code task still run there).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dapo_cli.errors import DapoError

RewardFn = Callable[..., Sequence[Any]]


@functools.cache
def load_reward(spec: str) -> RewardFn:
    """The function ``spec`` names (``file.py:fn`` or ``module:fn``); one-line errors."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise DapoError(
            f"--reward expects path/to/file.py:function or module:function, got {spec!r}"
        )
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise DapoError(f"--reward: {path} not found")
        module_spec = importlib.util.spec_from_file_location(f"dapo_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's module: say what it raised
            raise DapoError(
                f"--reward: importing {path} failed: {type(exc).__name__}: {exc}"
            ) from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise DapoError(f"--reward: cannot import {where} ({exc})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise DapoError(f"--reward: {where} has no function {name!r}")
    return fn


def call_reward(
    fn: RewardFn, samples: Sequence[Mapping[str, Any]], completions: Sequence[str], repeat: int
) -> tuple[list[float], list[bool]]:
    """``fn`` on ``completions`` (completion i answers ``samples[i // repeat]``); returns
    (rewards, correct), checked: one finite number (or number and bool) per completion."""
    owners = [samples[i // repeat] for i in range(len(completions))]
    columns = {key: [s.get(key) for s in owners] for key in owners[0] if key != "prompt"}
    prompts = [s["prompt"] for s in owners]
    try:
        out = list(fn(prompts=prompts, completions=list(completions), **columns))
    except Exception as exc:  # noqa: BLE001 - the user's function: say what it raised
        raise DapoError(f"the reward function raised {type(exc).__name__}: {exc}") from None
    if len(out) != len(completions):
        raise DapoError(
            f"the reward function returned {len(out)} values for {len(completions)} completions"
        )
    rewards, correct = [], []
    for value in out:
        reward, right = value if isinstance(value, tuple | list) else (value, None)
        if (
            isinstance(reward, bool)
            or not isinstance(reward, int | float)
            or not math.isfinite(reward)
        ):
            raise DapoError(
                f"the reward function returned {value!r}; expected a finite number "
                "or (number, bool) per completion"
            )
        rewards.append(float(reward))
        correct.append(bool(right) if right is not None else reward > 0)
    return rewards, correct
