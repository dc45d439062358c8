"""Where the bundled data lives (templates/ at the top of the repo, packaged as
``dapo_cli/templates`` in a wheel) and the default locations of user files."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB_PATH = Path("data") / "dapo.db"


def templates_dir() -> Path:
    """The templates folder: ``$DAPO_TEMPLATES``, else the source tree's, else the packaged copy."""
    env = os.environ.get("DAPO_TEMPLATES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "templates", here / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("dapo_cli templates folder not found; set DAPO_TEMPLATES")


def resolve_db_path(db_path: str | os.PathLike | None) -> Path:
    """``--db-path``, else ``$DAPO_DB``, else ``data/dapo.db``."""
    if db_path:
        return Path(db_path)
    env = os.environ.get("DAPO_DB")
    return Path(env) if env else DEFAULT_DB_PATH
