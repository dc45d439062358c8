"""Sample records on disk: reading (with validation that names file and line), writing
(atomic: a temporary file renamed into place), in JSONL, CSV or Parquet by extension.

A record is ``{"id", "task_type", "difficulty", "split", "prompt", "answer", "verify"}``.
On disk ``verify`` is a JSON object in JSONL and a JSON string in CSV and Parquet (its
shape differs between task types, which a columnar schema cannot hold). Fields outside
the record schema are ignored on reading.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dapo_cli.errors import DapoError, DataError
from dapo_cli.tasks.base import canonical_json, sample_id

FIELDS = ("id", "task_type", "difficulty", "split", "prompt", "answer", "verify")
FORMATS = (".jsonl", ".csv", ".parquet")
MAX_LINE_BYTES = 16 * 1024 * 1024  # one record; a longer line is a broken file, not a sample
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def file_format(path: str | os.PathLike) -> str:
    """The format named by the extension: one of FORMATS, or a DapoError."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DapoError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(FORMATS)}"
        )
    return suffix


# ---------------------------------------------------------------------------- validation


def validate_record(raw: Mapping[str, Any], default_split: str = "train") -> dict[str, Any]:
    """Check one raw record and return it in canonical form; ValueError names the problem."""
    from dapo_cli.rewards import known_task_types  # late: rewards imports every task
    from dapo_cli.tasks import TASKS

    if not isinstance(raw, Mapping):
        raise ValueError(f"expected an object, got {type(raw).__name__}")
    for name in ("task_type", "prompt", "answer"):
        if name not in raw or raw[name] is None:
            raise ValueError(f"missing required field {name!r}")
    rec: dict[str, Any] = {}
    for name in ("task_type", "prompt", "answer"):
        value = raw[name]
        if not isinstance(value, str):
            hint = f' (write it as a string: "{value}")' if isinstance(value, int | float) else ""
            raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}{hint}")
        rec[name] = value
    if not rec["prompt"].strip():
        raise ValueError("field 'prompt' is empty")
    if rec["task_type"] not in known_task_types():
        known = ", ".join(sorted(known_task_types()))
        raise ValueError(
            f"unknown task_type {rec['task_type']!r} (known: {known}; "
            "register a verifier for your own)"
        )

    verify = raw.get("verify")
    if verify is None or verify == "":
        verify = {}
    elif isinstance(verify, str):
        try:
            verify = json.loads(verify)
        except json.JSONDecodeError as exc:
            raise ValueError(f"field 'verify' is not valid JSON ({exc.msg})") from None
    if not isinstance(verify, dict):
        raise ValueError(f"field 'verify' must be an object, got {type(verify).__name__}")
    task = TASKS.get(rec["task_type"])
    if task is not None:
        problem = task.check_verify(verify)
        if problem:
            raise ValueError(f"field 'verify': {problem}")
    rec["verify"] = verify

    for name, default in (("difficulty", None), ("split", default_split)):
        value = raw.get(name)
        if value is None or value == "":
            value = default
        elif not isinstance(value, str):
            raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
        rec[name] = value
    if not _SPLIT_NAME.match(rec["split"]):
        raise ValueError(f"field 'split' {rec['split']!r} is not a valid split name")

    rid = raw.get("id")
    if rid is None or rid == "":
        rid = sample_id(rec["task_type"], rec["prompt"])
    elif not isinstance(rid, str):
        raise ValueError(f"field 'id' must be a string, got {type(rid).__name__}")
    rec["id"] = rid
    return {name: rec[name] for name in FIELDS}


# ------------------------------------------------------------------------------- reading


def read_records(path: str | os.PathLike, default_split: str = "train") -> list[dict[str, Any]]:
    """Read and validate every record of a JSONL, CSV or Parquet file.

    Raises DataError naming ``file:line`` (or row) and the problem at the first bad record;
    an empty file is an error too. Records without a ``split`` get ``default_split``.
    """
    p = Path(path)
    if p.is_dir():
        raise DataError(str(p), "is a directory, expected a file")
    fmt = file_format(p)
    if not p.exists():
        raise DataError(str(p), "file not found")
    try:
        if fmt == ".jsonl":
            records = list(_read_jsonl(p, default_split))
        elif fmt == ".csv":
            records = list(_read_csv(p, default_split))
        else:
            records = list(_read_parquet(p, default_split))
    except PermissionError:
        raise DataError(str(p), "permission denied") from None
    if not records:
        raise DataError(str(p), "file holds no records")
    return records


def _read_jsonl(p: Path, default_split: str):
    with open(p, "rb") as f:
        lineno = 0
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            lineno += 1
            where = f"{p}:{lineno}"
            if len(line) > MAX_LINE_BYTES:
                raise DataError(where, f"line longer than {MAX_LINE_BYTES // 2**20} MiB")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(where, f"not UTF-8 (byte {exc.start})") from None
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(where, f"not valid JSON ({exc.msg})") from None
            if not isinstance(raw, dict):
                raise DataError(where, f"expected a JSON object, got {type(raw).__name__}")
            yield _validated(raw, default_split, where)


def _read_csv(p: Path, default_split: str):
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(str(p), f"not UTF-8 (byte {exc.start})") from None
    csv.field_size_limit(MAX_LINE_BYTES)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        missing = [f for f in ("task_type", "prompt", "answer") if f not in header]
        if header and missing:
            raise DataError(f"{p}:1", f"header lacks column(s) {', '.join(missing)}")
        for raw in reader:
            where = f"{p}:{reader.line_num}"
            if None in raw:
                raise DataError(where, "more fields than the header has")
            yield _validated(raw, default_split, where)
    except csv.Error as exc:
        raise DataError(f"{p}:{reader.line_num}", f"malformed CSV ({exc})") from None


def _read_parquet(p: Path, default_split: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(str(p), f"not a readable Parquet file ({exc})") from None
    for i, raw in enumerate(table.to_pylist(), start=1):
        yield _validated(raw, default_split, f"{p}: row {i}")


def _validated(raw: Mapping[str, Any], default_split: str, where: str) -> dict[str, Any]:
    try:
        return validate_record(raw, default_split)
    except ValueError as exc:
        raise DataError(where, str(exc)) from None


# ------------------------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Open ``path`` for binary writing so that it appears only when complete: writes go to a
    temporary file in the same folder (created if missing), renamed into place at the end and
    removed on any error."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
    except OSError as exc:
        raise DapoError(f"{p}: cannot write here ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_rows(
    path: str | os.PathLike,
    rows: list[dict[str, Any]],
    columns: Sequence[str],
    json_columns: Sequence[str] = (),
    parquet_strings: bool = False,
) -> int:
    """Write rows as JSONL, CSV or Parquet by extension, atomically. ``json_columns`` hold
    objects: canonical JSON objects in JSONL, canonical JSON text in CSV and Parquet. Parquet
    column types are inferred, or all strings with ``parquet_strings``."""
    fmt = file_format(path)

    def cell(name: str, value: Any, as_text: bool) -> Any:
        if name not in json_columns:
            return value
        return canonical_json(value) if as_text else json.loads(canonical_json(value))

    with atomic_file(path) as f:
        if fmt == ".jsonl":
            for row in rows:
                line = {name: cell(name, row.get(name), False) for name in columns}
                f.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        elif fmt == ".csv":
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            writer.writerows({n: cell(n, r.get(n), True) for n in columns} for r in rows)
            f.write(text.getvalue().encode("utf-8"))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = {n: [cell(n, r.get(n), True) for r in rows] for n in columns}
            schema = pa.schema([(n, pa.string()) for n in columns]) if parquet_strings else None
            pq.write_table(pa.table(table, schema=schema), f)
    return len(rows)


def write_records(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Write sample records atomically; returns the count. Equal records give byte-identical
    files. In Parquet every column is a string (``verify`` as JSON text)."""
    rows = [{**rec, "verify": rec.get("verify") or {}} for rec in records]
    return write_rows(path, rows, FIELDS, json_columns=("verify",), parquet_strings=True)
