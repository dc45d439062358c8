"""`dapo db`: init, import (all or nothing, one clear line per bad input), export -> import
round trips, stats."""

from __future__ import annotations

import hashlib
import json

import datasets
import pytest
from typer.testing import CliRunner

from dapo_cli.cli.app import app
from dapo_cli.datagen import generate_dataset
from dapo_cli.records import read_records, write_records
from dapo_cli.store import MIGRATIONS, Store

FORMATS = ("jsonl", "csv", "parquet")
runner = CliRunner()


def dapo(*args: object, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def assert_one_line_error(result, *expected: str) -> None:
    """Exit 1, no traceback, exactly one line on stderr naming each expected piece."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])


@pytest.fixture(scope="module")
def records():
    return generate_dataset(50, ["math"])


@pytest.fixture
def data_file(tmp_path, records):
    path = tmp_path / "data.jsonl"
    write_records(path, records)
    return path


@pytest.fixture
def db(tmp_path):
    return tmp_path / "db" / "dapo.db"


def snapshot(db_path) -> tuple[str, list]:
    """The database file's bytes (hash) and every samples row."""
    with Store(db_path, create=False) as s:
        rows = list(s.db.query("SELECT * FROM samples ORDER BY rowid"))
    return hashlib.sha256(db_path.read_bytes()).hexdigest(), rows


# ---------------------------------------------------------------------------------- init


def test_init_twice_is_harmless(db):
    first = dapo("db", "init", "--db-path", db)
    assert first.exit_code == 0, first.output
    assert (
        str(db) in first.stdout
        and "m001_initial" in first.stdout
        and f"applied {len(MIGRATIONS)}" in first.stdout
    )
    second = dapo("db", "init", "--db-path", db)
    assert second.exit_code == 0 and "already up to date" in second.stdout
    with Store(db) as s:
        assert len(s.migrations()) == len(MIGRATIONS)


def test_db_path_defaults_to_the_environment(tmp_path, data_file):
    db = tmp_path / "from-env" / "dapo.db"
    result = dapo("db", "import", data_file, env={"DAPO_DB": str(db)})
    assert result.exit_code == 0, result.output
    assert db.is_file()


# -------------------------------------------------------------------------------- import


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_each_format(tmp_path, db, records, fmt):
    path = tmp_path / f"data.{fmt}"
    write_records(path, records)
    result = dapo("db", "import", path, "--db-path", db)
    assert result.exit_code == 0, result.output
    assert "50 inserted, 0 skipped" in result.stdout
    with Store(db) as s:
        assert s.samples() == records
        assert s.db.execute("SELECT DISTINCT source FROM samples").fetchall() == [(path.name,)]


def test_second_import_skips_every_duplicate(data_file, db):
    dapo("db", "import", data_file, "--db-path", db)
    result = dapo("db", "import", data_file, "--db-path", db)
    assert result.exit_code == 0 and "0 inserted, 50 skipped" in result.stdout


def test_split_fills_in_records_without_one_and_never_overrides(tmp_path, db, records):
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({**r, "split": None}) + "\n" for r in records[:10]))
    assert dapo("db", "import", bare, "--split", "dev", "--db-path", db).exit_code == 0
    with_splits = tmp_path / "both.jsonl"
    write_records(with_splits, records[10:])  # train and test records
    n_train = sum(r["split"] == "train" for r in records[10:])
    result = dapo("db", "import", with_splits, "--split", "test", "--db-path", db)
    assert f"{n_train} record(s) kept the split named in the file (train: {n_train})" in (
        result.stdout
    )
    with Store(db) as s:
        assert [r["split"] for r in s.samples()] == ["dev"] * 10 + [
            r["split"] for r in records[10:]
        ]


def test_a_bad_30th_line_leaves_the_database_untouched(tmp_path, db, records, data_file):
    assert dapo("db", "import", data_file, "--db-path", db).exit_code == 0
    before = snapshot(db)
    fresh = generate_dataset(40, ["math"], seed=1)
    lines = [json.dumps(r) for r in fresh]
    lines[29] = json.dumps({**fresh[29], "answer": 7})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    result = dapo("db", "import", bad, "--db-path", db)
    assert_one_line_error(result, f"{bad}:30", "'answer' must be a string")
    assert snapshot(db) == before


def _write(name: str, content: bytes | str):
    def make(tmp_path, records):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return make


def _record_line(**changes):
    def make(tmp_path, records):
        path = tmp_path / "data.jsonl"
        path.write_text(json.dumps({**records[0], **changes}) + "\n")
        return path

    return make


def _huge_line(tmp_path, records):
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({**records[0], "prompt": "x" * (50 * 2**20)}) + "\n")
    return path


def _directory(tmp_path, records):
    (tmp_path / "folder.jsonl").mkdir()
    return tmp_path / "folder.jsonl"


BAD_INPUTS = {
    "missing-file": (lambda tmp, recs: tmp / "absent.jsonl", "file not found"),
    "directory": (_directory, "is a directory"),
    "not-utf8": (_write("latin1.jsonl", b'{"prompt": "caf\xe9"}\n'), "not UTF-8"),
    "not-json": (_write("oops.jsonl", "{this is not json\n"), "not valid JSON"),
    "empty": (_write("empty.jsonl", ""), "holds no records"),
    "answer-int": (_record_line(answer=4), "field 'answer' must be a string"),
    "unknown-task": (_record_line(task_type="alchemy"), "unknown task_type 'alchemy'"),
    "line-50mb": (_huge_line, "line longer than"),
    "bad-extension": (_write("data.txt", "hello"), "cannot read .txt (use .jsonl, .json"),
    "csv-no-columns": (_write("data.csv", "a,b\n1,2\n"), "header lacks column(s)"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gives_one_clear_line(tmp_path, db, records, name):
    make, expected = BAD_INPUTS[name]
    path = make(tmp_path, records)
    result = dapo("db", "import", path, "--db-path", db)
    assert_one_line_error(result, str(path), expected)
    assert not db.exists()  # validation happens before the database is opened


# ------------------------------------------------------------- import through 🤗 datasets

GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many now?",
     "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A farm has 1,200 hens and buys 300 more. How many hens?",
     "answer": "1200 + 300 = 1500\n#### 1,500"},
    {"question": "What is 6 times 7?", "answer": "6 * 7 = 42\n#### 42"},
]  # fmt: skip
MATH = [
    {"problem": "What is $\\frac{1}{4} + \\frac{1}{4}$?", "level": "Level 1",
     "solution": "We add: $\\frac{1}{4}+\\frac{1}{4} = \\boxed{\\frac{1}{2}}$."},
    {"problem": "Solve $x + 3 = 5$.", "solution": "So $x = \\boxed{2}$."},
]  # fmt: skip


def save_to_disk(path, rows, **splits):
    """A save_to_disk folder: one dataset of ``rows``, or (``splits``) one per split."""
    if splits:
        datasets.DatasetDict(
            {k: datasets.Dataset.from_list(v) for k, v in splits.items()}
        ).save_to_disk(str(path))
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def test_import_a_gsm8k_folder_one_split_at_a_time(tmp_path, db):
    folder = save_to_disk(tmp_path / "gsm8k", None, train=GSM8K[:2], test=GSM8K[2:])
    first = dapo("db", "import", folder, "--data-format", "gsm8k", "--db-path", db)
    assert first.exit_code == 0, first.output
    assert "2 inserted, 0 skipped" in first.stdout
    test = dapo(
        "db", "import", folder, "--data-format", "gsm8k", "--split", "test", "--db-path", db
    )
    assert test.exit_code == 0 and "1 inserted, 0 skipped" in test.stdout
    again = dapo("db", "import", folder, "--data-format", "gsm8k", "--db-path", db)
    assert again.exit_code == 0 and "0 inserted, 2 skipped" in again.stdout
    with Store(db) as s:
        train_rows = s.samples(split="train")
        assert [(r["prompt"], r["answer"], r["task_type"]) for r in train_rows] == [
            (GSM8K[0]["question"], "7", "math"), (GSM8K[1]["question"], "1500", "math"),
        ]  # fmt: skip
        assert [r["answer"] for r in s.samples(split="test")] == ["42"]
        assert s.db.execute("SELECT DISTINCT source FROM samples").fetchall() == [("gsm8k",)]


def test_import_a_math_dataset_gives_every_row_the_split_asked_for(tmp_path, db):
    folder = save_to_disk(tmp_path / "math", MATH)  # one dataset, no splits of its own
    result = dapo("db", "import", folder, "--data-format", "math", "--split", "test",
                  "--db-path", db)  # fmt: skip
    assert result.exit_code == 0, result.output
    with Store(db) as s:
        assert s.samples(split="train") == []
        rows = s.samples(split="test")
    assert [(r["prompt"], r["answer"]) for r in rows] == [
        (MATH[0]["problem"], "\\frac{1}{2}"), (MATH[1]["problem"], "2"),
    ]  # fmt: skip


def test_a_malformed_dataset_row_is_one_line_and_writes_nothing(tmp_path, db, data_file):
    assert dapo("db", "import", data_file, "--db-path", db).exit_code == 0
    before = snapshot(db)
    bad = save_to_disk(tmp_path / "bad", [*GSM8K[:2], {"question": "q?", "answer": "no marker"}])
    result = dapo("db", "import", bad, "--data-format", "gsm8k", "--db-path", db)
    assert_one_line_error(result, f"{bad} (train row 2, format gsm8k)", "'####'")
    assert snapshot(db) == before
    fresh = tmp_path / "fresh.db"
    result = dapo("db", "import", bad, "--data-format", "gsm8k", "--db-path", fresh)
    assert_one_line_error(result, "row 2")
    assert not fresh.exists()  # validated before the store is even created


def test_this_projects_records_in_a_dataset_keep_their_own_splits(tmp_path, db, records):
    folder = save_to_disk(tmp_path / "ours", [{**r, "verify": json.dumps(r["verify"])}
                                              for r in records])  # fmt: skip
    result = dapo("db", "import", folder, "--split", "test", "--db-path", db)
    assert result.exit_code == 0, result.output
    n_train = sum(r["split"] == "train" for r in records)
    assert f"{n_train} record(s) kept the split named in the file (train: {n_train})" in (
        result.stdout
    )
    with Store(db) as s:
        assert s.samples() == records


def test_named_fields_need_the_fields_format(tmp_path, db):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"q": "What is 2 + 2?", "a": 4}]))
    result = dapo("db", "import", path, "--data-format", "fields", "--prompt-field", "q",
                  "--answer-field", "a", "--db-path", db)  # fmt: skip
    assert result.exit_code == 0, result.output
    with Store(db) as s:
        assert [(r["prompt"], r["answer"]) for r in s.samples()] == [("What is 2 + 2?", "4")]
    wrong = dapo("db", "import", path, "--prompt-field", "q", "--db-path", db)
    assert_one_line_error(wrong, "--prompt-field and --answer-field need --data-format fields")


# ------------------------------------------------------------------------ database paths


def test_db_in_a_missing_folder_is_created(tmp_path, data_file):
    db = tmp_path / "new" / "nested" / "dapo.db"
    assert dapo("db", "import", data_file, "--db-path", db).exit_code == 0
    assert db.is_file()


@pytest.mark.parametrize(
    "where, expected",
    [
        ("under-a-file", "cannot create folder"),
        ("proc", "cannot open or create a database here"),
        ("corrupt", "not a SQLite database"),
        ("directory", "is a directory"),
    ],
)
def test_unusable_db_path_gives_one_clear_line(tmp_path, data_file, where, expected):
    # we may run as root, for whom permissions do not fail: use places that fail for anyone
    (tmp_path / "plain").write_text("a regular file")
    (tmp_path / "corrupt.db").write_bytes(b"garbage " * 512)
    (tmp_path / "folder.db").mkdir()
    db = {
        "under-a-file": tmp_path / "plain" / "dapo.db",
        "proc": "/proc/dapo-cli-test.db",
        "corrupt": tmp_path / "corrupt.db",
        "directory": tmp_path / "folder.db",
    }[where]
    for command in (["db", "init"], ["db", "import", data_file]):
        assert_one_line_error(dapo(*command, "--db-path", db), str(db), expected)
    assert_one_line_error(dapo("db", "stats", "--db-path", db), str(db))
    assert (tmp_path / "corrupt.db").read_bytes() == b"garbage " * 512


def test_readers_need_an_existing_database(db):
    for command in (["db", "stats"], ["db", "export", db.parent / "out.jsonl"]):
        assert_one_line_error(dapo(*command, "--db-path", db), str(db), "dapo db init")
    assert not db.exists()


# -------------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_then_import_into_a_fresh_db_gives_the_same_samples(tmp_path, db, data_file, fmt):
    assert dapo("db", "import", data_file, "--db-path", db).exit_code == 0
    out = tmp_path / "out" / f"samples.{fmt}"
    result = dapo("db", "export", out, "--db-path", db)
    assert result.exit_code == 0 and "50 samples written" in result.stdout
    fresh = tmp_path / "fresh.db"
    assert dapo("db", "import", out, "--db-path", fresh).exit_code == 0
    with Store(db) as a, Store(fresh) as b:
        assert a.samples() == b.samples() and len(a.samples()) == 50


def test_export_filters_by_split_and_task_type(tmp_path, db, data_file):
    dapo("db", "import", data_file, "--db-path", db)
    out = tmp_path / "test.jsonl"
    result = dapo("db", "export", out, "--split", "test", "--task-type", "math", "--db-path", db)
    assert result.exit_code == 0, result.output
    assert [r["split"] for r in read_records(out)] == ["test"] * 5
    none = dapo("db", "export", out, "--task-type", "code", "--db-path", db)
    assert_one_line_error(none, "no samples to export")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_interactions(tmp_path, db, fmt):
    with Store(db) as s:
        s.log_interaction("2+2?", "Answer: 4", model="tiny", params={"temperature": 0.7})
        s.log_interaction("hi", "hello, world", model="tiny")
    out = tmp_path / f"chats.{fmt}"
    result = dapo("db", "export", out, "--what", "interactions", "--db-path", db)
    assert result.exit_code == 0 and "2 interactions written" in result.stdout
    text = out.read_text()
    assert "2+2?" in text and "hello, world" in text and "temperature" in text
    if fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        assert rows[0]["params"] == {"temperature": 0.7} and rows[1]["prompt"] == "hi"


# --------------------------------------------------------------------------------- stats


def test_stats_shows_the_counts(db, data_file):
    dapo("db", "import", data_file, "--db-path", db)
    with Store(db) as s:
        run_id = s.start_run("train", {}, model="tiny")
        s.log_metrics(run_id, 0, {"loss": 1.0, "reward": 0.5, "kl": 0.0})
        s.finish_run(run_id, "completed")
        for _ in range(4):
            s.log_interaction("q", "a")
    result = dapo("db", "stats", "--db-path", db)
    assert result.exit_code == 0, result.output
    math_row = next(line for line in result.stdout.splitlines() if "math" in line)
    assert [cell.strip() for cell in math_row.split("│")[1:5]] == ["math", "45", "5", "50"]
    assert "completed" in result.stdout and "metrics: 3 values" in result.stdout
    assert "interactions: 4" in result.stdout


def test_every_db_command_has_help_and_an_example():
    for command in ("", "init", "import", "export", "stats"):
        result = dapo("db", *filter(None, [command]), "--help")
        assert result.exit_code == 0
        assert f"Example: dapo db {command}".strip() in result.stdout
