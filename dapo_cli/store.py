"""The SQLite database: the one place that knows the schema, its migrations and the queries.

Tables (built by the numbered migration functions in ``MIGRATIONS``, each recorded once in
the ``migrations`` table when applied):

    samples       one row per sample (the records.FIELDS columns, ``verify`` as canonical
                  JSON text) plus ``source`` (the file it came from) and ``created_at``
    runs          one row per train/eval/sft run: kind, status, model, config (JSON), times
    metrics       what a run logs: (run_id, step, name, value, time in unix seconds)
    interactions  chat turns: prompt, response, sampling params (JSON), latency, token counts
    experiments   one row per experiment (``dapo ablate``): kind, name, settings (JSON), status
    experiment_runs  which runs make up an experiment: (experiment_id, run_id, rung, seed,
                  role = train | eval, step = the checkpoint an eval evaluated)

A training run, an eval and a chat may write at the same time: the database is in WAL mode
(readers never block the writer), each write is one short ``BEGIN IMMEDIATE`` transaction,
and a writer waits up to ``busy_timeout_s`` for another's lock instead of failing.

Opening a ``Store`` creates the file (and its folder) and applies any missing migrations, so
writers never need ``dapo db init`` first. ``create=False`` opens only an existing database,
for commands that just read. Timestamps (``*_at``) are ISO 8601 in UTC.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from dapo_cli.errors import DapoError, DataError
from dapo_cli.records import FIELDS, validate_record
from dapo_cli.tasks.base import canonical_json

RUN_KINDS = ("train", "eval", "sft")
RUN_STATUSES = ("running", "completed", "converged", "failed", "interrupted")
EXPERIMENT_ROLES = ("train", "eval")
BUSY_TIMEOUT_S = 30.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------- migrations
# Append new functions (m002_..., m003_...); never edit one that has shipped. Each runs once,
# inside the same transaction that records it, so a failing migration leaves no trace.


def m001_initial(db: Database) -> None:
    """samples, runs, metrics and interactions."""
    db["samples"].create(
        {"id": str, "task_type": str, "difficulty": str, "split": str, "prompt": str,
         "answer": str, "verify": str, "source": str, "created_at": str},
        pk="id",
        not_null={"task_type", "split", "prompt", "answer", "verify", "created_at"},
    )  # fmt: skip
    db["samples"].create_index(["split"])
    db["samples"].create_index(["task_type"])
    db["runs"].create(
        {"id": str, "kind": str, "status": str, "model": str, "config": str,
         "started_at": str, "ended_at": str},
        pk="id",
        not_null={"kind", "status", "config", "started_at"},
    )  # fmt: skip
    db["metrics"].create(
        {"run_id": str, "step": int, "name": str, "value": float, "time": float},
        not_null={"run_id", "step", "name", "time"},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["metrics"].create_index(["run_id", "step"])
    db["interactions"].create(
        {"id": str, "session": str, "model": str, "prompt": str, "response": str,
         "params": str, "latency_s": float, "prompt_tokens": int, "completion_tokens": int,
         "created_at": str},
        pk="id",
        not_null={"prompt", "response", "params", "created_at"},
    )  # fmt: skip
    db["interactions"].create_index(["session"])


def m002_experiments(db: Database) -> None:
    """experiments and experiment_runs (an ablation's runs under one id)."""
    db["experiments"].create(
        {"id": str, "kind": str, "name": str, "settings": str, "status": str,
         "started_at": str, "ended_at": str},
        pk="id",
        not_null={"kind", "name", "settings", "status", "started_at"},
    )  # fmt: skip
    db["experiments"].create_index(["name"])
    db["experiment_runs"].create(
        {"experiment_id": str, "run_id": str, "rung": str, "seed": int, "role": str,
         "step": int},
        pk=("experiment_id", "run_id"),
        not_null={"rung", "seed", "role", "step"},
        foreign_keys=[("experiment_id", "experiments", "id"), ("run_id", "runs", "id")],
    )  # fmt: skip


MIGRATIONS: list[Callable[[Database], None]] = [m001_initial, m002_experiments]


# --------------------------------------------------------------------------------- store


class Store:
    """An open database. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        migrate: bool = True,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise DapoError(
                f"{self.path}: no database here yet; create it with `dapo db init` "
                "or `dapo db import FILE` (or pass --db-path)"
            )
        if self.path.is_dir():
            raise DapoError(f"{self.path}: is a directory; --db-path must name a database file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror
            raise DapoError(
                f"{self.path}: cannot create folder {self.path.parent} ({why})"
            ) from None
        try:
            conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise DapoError(_explain(self.path, exc)) from None
        try:
            self.db = Database(conn, execute_plugins=False)
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=NORMAL")  # safe in WAL; a commit needs no fsync
            conn.execute("PRAGMA foreign_keys=ON")
            if migrate:
                self.init()
        except (sqlite3.Error, DapoError) as exc:
            conn.close()
            if isinstance(exc, DapoError):
                raise
            raise DapoError(_explain(self.path, exc)) from None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[Database]:
        """One write transaction. BEGIN IMMEDIATE takes the write lock up front (waiting up to
        the busy timeout), so concurrent writers queue instead of failing halfway."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.rollback()
                raise
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # locked too long, read-only, disk full
            self.db.rollback()
            raise DapoError(_explain(self.path, exc)) from None

    # ------------------------------------------------------------------------ migrations

    def init(self) -> list[str]:
        """Apply the migrations not yet recorded, in order, in one transaction.

        Returns the names applied now; ``[]`` when the schema is already current (in that
        case nothing is written, so opening a current database leaves its bytes alone)."""
        if not self._pending():
            return []
        with self._write():  # re-check under the lock: another process may have migrated
            self.db["migrations"].create(
                {"number": int, "name": str, "applied_at": str}, pk="number", if_not_exists=True
            )
            pending = self._pending()
            for number, migration in pending:
                migration(self.db)
                self.db["migrations"].insert(
                    {"number": number, "name": migration.__name__, "applied_at": _now()}
                )
        return [migration.__name__ for _, migration in pending]

    def _pending(self) -> list[tuple[int, Callable[[Database], None]]]:
        done = {row["number"] for row in self.migrations()}
        return [(n, m) for n, m in enumerate(MIGRATIONS, start=1) if n not in done]

    def migrations(self) -> list[dict[str, Any]]:
        """The applied migrations: ``{"number", "name", "applied_at"}`` in order."""
        if not self.db["migrations"].exists():
            return []
        return list(self.db.query("SELECT * FROM migrations ORDER BY number"))

    # --------------------------------------------------------------------------- samples

    def import_samples(self, records: Iterable[Mapping[str, Any]], source: str) -> tuple[int, int]:
        """Insert sample records, ALL OR NOTHING, in one transaction; returns (inserted, skipped).

        Each record is validated (``records.validate_record``); the first bad one raises a
        DataError naming ``source: record N`` and nothing is kept. A record whose id is
        already in the database, or earlier in ``records``, is skipped and counted."""
        created_at = _now()
        count = 0

        def rows() -> Iterator[tuple]:
            nonlocal count
            for count, raw in enumerate(records, start=1):
                try:
                    rec = validate_record(raw)
                except ValueError as exc:
                    raise DataError(f"{source}: record {count}", str(exc)) from None
                rec["verify"] = canonical_json(rec["verify"])
                yield (*(rec[name] for name in FIELDS), source, created_at)

        columns = (*FIELDS, "source", "created_at")
        sql = (
            f"INSERT INTO samples ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            " ON CONFLICT(id) DO NOTHING"
        )
        with self._write():
            inserted = self.db.conn.executemany(sql, rows()).rowcount
        return inserted, count - inserted

    def iter_samples(
        self, split: str | None = None, task_types: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Samples in records.FIELDS shape (``verify`` a dict), in insertion order."""
        where, params = _sample_filter(split, task_types)
        sql = f"SELECT {', '.join(FIELDS)} FROM samples{where} ORDER BY rowid"
        for row in self.db.query(sql, params):
            row["verify"] = json.loads(row["verify"])
            yield row

    def samples(
        self, split: str | None = None, task_types: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        return list(self.iter_samples(split, task_types))

    # ---------------------------------------------------------------------- runs, metrics

    def start_run(self, kind: str, config: Mapping[str, Any], model: str | None) -> str:
        """Record a new run (status ``running``); returns its id (32 hex digits).
        ``config`` is stored as JSON; values JSON cannot hold (paths) are stored as text."""
        if kind not in RUN_KINDS:
            raise ValueError(f"run kind must be one of {', '.join(RUN_KINDS)}, got {kind!r}")
        run_id = uuid.uuid4().hex
        row = {"id": run_id, "kind": kind, "status": "running", "model": model,
               "config": json.dumps(dict(config), sort_keys=True, default=str),
               "started_at": _now(), "ended_at": None}  # fmt: skip
        with self._write():
            self.db["runs"].insert(row)
        return run_id

    def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        """Record ``{name: value}`` at ``step`` of a run, in one transaction (NaN is stored as
        NULL). An unknown run id is a DapoError."""
        now = time.time()
        rows = [(run_id, int(step), name, float(v), now) for name, v in values.items()]
        try:
            with self._write():
                self.db.conn.executemany(
                    "INSERT INTO metrics (run_id, step, name, value, time) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.IntegrityError:
            raise DapoError(f"{self.path}: no run {run_id!r}") from None

    def finish_run(self, run_id: str, status: str) -> None:
        """Mark a run completed, converged (stopped early), failed or interrupted, stamping
        ``ended_at``."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        with self._write():
            cur = self.db.execute(
                "UPDATE runs SET status = ?, ended_at = ? WHERE id = ?", (status, _now(), run_id)
            )
        if cur.rowcount == 0:
            raise DapoError(f"{self.path}: no run {run_id!r}")

    def reopen_run(self, run_id: str, from_step: int) -> None:
        """Mark a run ``running`` again to resume it after ``from_step``: it keeps its id and
        the metrics up to that step; those logged after it (work lost in a crash, which the
        resumed run redoes) are deleted."""
        with self._write():
            cur = self.db.execute(
                "UPDATE runs SET status = 'running', ended_at = NULL WHERE id = ?", (run_id,)
            )
            self.db.execute(
                "DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, int(from_step))
            )
        if cur.rowcount == 0:
            raise DapoError(f"{self.path}: no run {run_id!r}")

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Runs (all, or of one kind) in start order, ``config`` decoded."""
        return self._decoded_rows("runs", "config", "kind", kind)

    def get_run(self, run_id: str) -> dict[str, Any]:
        rows = self._decoded_rows("runs", "config", "id", run_id)
        if not rows:
            raise DapoError(f"{self.path}: no run {run_id!r}")
        return rows[0]

    def metrics(self, run_id: str, name: str | None = None) -> list[dict[str, Any]]:
        """A run's metrics as ``{"step", "name", "value", "time"}``, by step then logging order."""
        sql = "SELECT step, name, value, time FROM metrics WHERE run_id = ?"
        params: list[Any] = [run_id]
        if name:
            sql, params = sql + " AND name = ?", [*params, name]
        return list(self.db.query(sql + " ORDER BY step, rowid", params))

    # ----------------------------------------------------------------------- experiments

    def start_experiment(self, kind: str, name: str, settings: Mapping[str, Any]) -> str:
        """Record a new experiment (status ``running``); returns its id (32 hex digits)."""
        row = {"id": uuid.uuid4().hex, "kind": kind, "name": name,
               "settings": json.dumps(dict(settings), sort_keys=True, default=str),
               "status": "running", "started_at": _now(), "ended_at": None}  # fmt: skip
        with self._write():
            self.db["experiments"].insert(row)
        return row["id"]

    def experiments(self, name: str | None = None) -> list[dict[str, Any]]:
        """Experiments (all, or those named ``name``) in start order, ``settings`` decoded."""
        return self._decoded_rows("experiments", "settings", "name", name)

    def get_experiment(self, experiment_id: str) -> dict[str, Any]:
        rows = self._decoded_rows("experiments", "settings", "id", experiment_id)
        if not rows:
            raise DapoError(f"{self.path}: no experiment {experiment_id!r}")
        return rows[0]

    def set_experiment_status(self, experiment_id: str, status: str) -> None:
        """running again (resumed), or how it ended (``ended_at`` stamped then)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        ended = None if status == "running" else _now()
        with self._write():
            self.db.execute(
                "UPDATE experiments SET status = ?, ended_at = ? WHERE id = ?",
                (status, ended, experiment_id),
            )

    def add_experiment_run(
        self, experiment_id: str, run_id: str, *, rung: str, seed: int, role: str, step: int = 0
    ) -> None:
        """File a run under an experiment: the rung and seed it belongs to, its role (train,
        or eval of the checkpoint at ``step``)."""
        if role not in EXPERIMENT_ROLES:
            raise ValueError(f"role must be one of {', '.join(EXPERIMENT_ROLES)}, got {role!r}")
        row = {"experiment_id": experiment_id, "run_id": run_id, "rung": rung,
               "seed": int(seed), "role": role, "step": int(step)}  # fmt: skip
        with self._write():
            self.db["experiment_runs"].insert(row, replace=True)

    def experiment_runs(self, experiment_id: str) -> list[dict[str, Any]]:
        """An experiment's runs in filing order: rung, seed, role, step, and the run's own
        kind, status, model, started_at and ended_at."""
        sql = (
            "SELECT e.rung, e.seed, e.role, e.step, r.id AS run_id, r.kind, r.status, "
            "r.model, r.started_at, r.ended_at FROM experiment_runs e "
            "JOIN runs r ON r.id = e.run_id WHERE e.experiment_id = ? ORDER BY e.rowid"
        )
        return list(self.db.query(sql, [experiment_id]))

    # ---------------------------------------------------------------------- interactions

    def log_interaction(
        self,
        prompt: str,
        response: str,
        *,
        model: str | None = None,
        session: str | None = None,
        params: Mapping[str, Any] | None = None,
        latency_s: float | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> str:
        """Record one chat turn; returns its id."""
        row = {"id": uuid.uuid4().hex, "session": session, "model": model, "prompt": prompt,
               "response": response, "params": canonical_json(dict(params or {})),
               "latency_s": latency_s, "prompt_tokens": prompt_tokens,
               "completion_tokens": completion_tokens, "created_at": _now()}  # fmt: skip
        with self._write():
            self.db["interactions"].insert(row)
        return row["id"]

    def export_interactions(self, session: str | None = None) -> list[dict[str, Any]]:
        """Every interaction (or one session's), oldest first, ``params`` decoded."""
        return self._decoded_rows("interactions", "params", "session", session)

    def _decoded_rows(self, table: str, json_column: str, column: str, value: Any) -> list[dict]:
        """Rows of ``table`` (where ``column = value`` unless value is None) in insertion
        order, with ``json_column`` decoded."""
        where, params = (f" WHERE {column} = ?", [value]) if value is not None else ("", [])
        rows = list(self.db.query(f"SELECT * FROM {table}{where} ORDER BY rowid", params))
        for row in rows:
            row[json_column] = json.loads(row[json_column])
        return rows

    # ----------------------------------------------------------------------------- stats

    def stats(self) -> dict[str, Any]:
        """What the database holds, as plain data."""
        q = self.db.query
        return {
            "path": str(self.path),
            "schema_version": max((m["number"] for m in self.migrations()), default=0),
            "samples": list(q(
                "SELECT split, task_type, count(*) AS count FROM samples "
                "GROUP BY split, task_type ORDER BY split, task_type"
            )),
            "runs": list(q(
                "SELECT kind, status, count(*) AS count FROM runs "
                "GROUP BY kind, status ORDER BY kind, status"
            )),
            "metrics": self.db["metrics"].count,
            "interactions": self.db["interactions"].count,
            "experiments": self.db["experiments"].count,
        }  # fmt: skip


def _sample_filter(split: str | None, task_types: Sequence[str] | None) -> tuple[str, list]:
    clauses, params = [], []
    if split:
        clauses.append("split = ?")
        params.append(split)
    if task_types:
        clauses.append(f"task_type IN ({', '.join('?' * len(task_types))})")
        params.extend(task_types)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _explain(path: Path, exc: sqlite3.Error) -> str:
    """One line for a SQLite error the user can act on."""
    msg = str(exc)
    for clue, advice in (
        ("not a database", "not a SQLite database; point --db-path at another file"),
        ("unable to open", "cannot open or create a database here; choose another --db-path"),
        ("readonly", "the database is read-only; choose another --db-path"),
        ("locked", "another process held the database too long; try again"),
    ):
        if clue in msg:
            return f"{path}: {advice} ({msg})"
    return f"{path}: {msg}"
