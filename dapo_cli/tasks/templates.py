"""Loading task templates and word lists from ``templates/tasks/<name>.json`` (data, not code,
so users can extend them without touching Python)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from dapo_cli.paths import templates_dir


@cache
def load_template(name: str) -> dict[str, Any]:
    """The parsed ``templates/tasks/<name>.json`` (cached; treat the result as read-only)."""
    path = templates_dir() / "tasks" / f"{name}.json"
    with open(path, encoding="utf-8") as f:
        return json.load(f)
