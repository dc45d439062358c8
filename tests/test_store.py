"""The store: migrations applied once, imports all-or-nothing with duplicates skipped, clear
errors for unusable paths, runs/metrics/interactions, and concurrent writers in WAL mode."""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
import time

import pytest

from dapo_cli import store as store_module
from dapo_cli.datagen import generate_dataset
from dapo_cli.errors import DapoError, DataError
from dapo_cli.store import MIGRATIONS, Store


@pytest.fixture(scope="module")
def records():
    return generate_dataset(50, ["math"])


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "dapo.db") as s:
        yield s


def table_names(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# ---------------------------------------------------------------------------- migrations


def test_init_applies_each_migration_once(tmp_path):
    path = tmp_path / "dapo.db"
    with Store(path, migrate=False) as s:
        assert s.init() == [m.__name__ for m in MIGRATIONS]
        assert s.init() == []
    with Store(path) as s:  # reopening migrates nothing either
        assert s.init() == []
        assert [m["number"] for m in s.migrations()] == list(range(1, len(MIGRATIONS) + 1))
    assert {"samples", "runs", "metrics", "interactions", "migrations"} <= table_names(path)


def test_migration_functions_are_numbered_in_order():
    for number, migration in enumerate(MIGRATIONS, start=1):
        assert re.fullmatch(rf"m{number:03d}_\w+", migration.__name__), migration.__name__


def test_init_applies_only_the_missing_migrations(tmp_path, monkeypatch):
    path = tmp_path / "dapo.db"
    Store(path).close()

    def m002_add_notes(db):
        db["notes"].create({"id": int, "text": str}, pk="id")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, m002_add_notes])
    with Store(path, migrate=False) as s:
        assert s.init() == ["m002_add_notes"]  # m001 re-run would fail: its tables exist
        assert [m["name"] for m in s.migrations()][-1] == "m002_add_notes"
    assert "notes" in table_names(path)


def test_wal_mode_and_busy_timeout(store):
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    with sqlite3.connect(store.path) as other:  # persistent: a fresh connection sees it too
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ------------------------------------------------------------------------------- samples


def test_import_then_read_back_the_same_records(store, records):
    assert store.import_samples(records, source="d.jsonl") == (50, 0)
    assert store.samples() == records  # same order, verify decoded to a dict
    assert len(store.samples(split="test")) == 5
    assert store.samples(task_types=["math"]) == records
    assert store.samples(task_types=["reasoning"]) == []
    sources = store.db.execute("SELECT DISTINCT source FROM samples").fetchall()
    assert sources == [("d.jsonl",)]


def test_duplicates_in_the_db_or_the_batch_are_skipped_and_counted(store, records):
    assert store.import_samples(records[:20], source="a") == (20, 0)
    # 10 already present, then 30 new of which 5 are repeated within the batch
    batch = records[10:50] + records[40:45]
    assert store.import_samples(batch, source="b") == (30, 15)
    assert [r["id"] for r in store.samples()] == [r["id"] for r in records]


def test_import_is_all_or_nothing(store, records):
    store.import_samples(records[:10], source="a")
    bad = [dict(r) for r in records[10:]]
    bad[29]["answer"] = 42  # the 30th record: 29 good ones are inserted before it
    with pytest.raises(DataError, match=r"^b: record 30: field 'answer' must be a string"):
        store.import_samples(bad, source="b")
    assert store.samples() == records[:10]


def test_unknown_task_type_is_rejected(store, records):
    with pytest.raises(DataError, match="unknown task_type 'nope'"):
        store.import_samples([{**records[0], "task_type": "nope"}], source="x")


# --------------------------------------------------------------------------------- paths


def test_missing_parent_folders_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "dapo.db"
    Store(path).close()
    assert path.is_file()


@pytest.mark.parametrize(
    "make_path",
    [
        pytest.param(lambda tmp: tmp / "dir.db", id="path-is-a-directory"),
        pytest.param(lambda tmp: tmp / "plain-file" / "dapo.db", id="parent-is-a-file"),
        pytest.param(lambda tmp: tmp / "plain-file" / "sub" / "dapo.db", id="ancestor-is-a-file"),
        pytest.param(lambda tmp: "/proc/dapo-test.db", id="proc"),
        pytest.param(lambda tmp: "/proc/dapo-test/dapo.db", id="proc-subdir"),
    ],
)
def test_unusable_locations_fail_with_one_clear_line(tmp_path, make_path):
    (tmp_path / "dir.db").mkdir()
    (tmp_path / "plain-file").write_text("x")
    path = make_path(tmp_path)
    with pytest.raises(DapoError) as info:
        Store(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "corrupt.db"
    junk = b"this is not a database at all " * 100
    path.write_bytes(junk)
    with pytest.raises(DapoError, match="not a SQLite database"):
        Store(path)
    assert path.read_bytes() == junk


def test_readers_do_not_create_a_database(tmp_path):
    path = tmp_path / "none.db"
    with pytest.raises(DapoError, match="dapo db init"):
        Store(path, create=False)
    assert not path.exists()


# ------------------------------------------------------------------- runs and metrics


def test_runs_and_metrics(store):
    run_id = store.start_run("train", {"lr": 1e-6, "group_size": 8}, model="tiny")
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)
    assert store.get_run(run_id)["status"] == "running"
    for step in range(3):
        store.log_metrics(run_id, step, {"loss": 1.0 / (step + 1), "reward": step - 1.0})
    store.finish_run(run_id, "completed")

    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["ended_at"] >= run["started_at"]
    assert run["config"] == {"lr": 1e-6, "group_size": 8} and run["model"] == "tiny"
    assert [(m["step"], m["value"]) for m in store.metrics(run_id, "reward")] == [
        (0, -1.0),
        (1, 0.0),
        (2, 1.0),
    ]
    assert len(store.metrics(run_id)) == 6
    assert [r["id"] for r in store.runs("train")] == [run_id] and store.runs("eval") == []


def test_run_errors(store):
    with pytest.raises(ValueError, match="run kind"):
        store.start_run("pretrain", {}, model=None)
    run_id = store.start_run("eval", {}, model=None)
    with pytest.raises(ValueError, match="run status"):
        store.finish_run(run_id, "done")
    with pytest.raises(DapoError, match="no run 'missing'"):
        store.finish_run("missing", "failed")
    with pytest.raises(DapoError, match="no run 'missing'"):
        store.log_metrics("missing", 0, {"loss": 1.0})
    assert store.stats()["metrics"] == 0  # the failed write left nothing behind


def test_interactions(store):
    first = store.log_interaction("2+2?", "Answer: 4", model="tiny", session="s1",
                                  params={"temperature": 0.7}, latency_s=0.25,
                                  prompt_tokens=5, completion_tokens=3)  # fmt: skip
    store.log_interaction("hi", "hello", session="s2")
    rows = store.export_interactions()
    assert [r["prompt"] for r in rows] == ["2+2?", "hi"]
    assert rows[0]["id"] == first and rows[0]["params"] == {"temperature": 0.7}
    assert rows[0]["latency_s"] == 0.25 and rows[0]["completion_tokens"] == 3
    assert [r["response"] for r in store.export_interactions(session="s2")] == ["hello"]


def test_stats_is_plain_data(store, records):
    store.import_samples(records, source="d")
    run_id = store.start_run("train", {}, model="tiny")
    store.log_metrics(run_id, 0, {"loss": 1.0, "reward": 0.5})
    store.finish_run(run_id, "interrupted")
    store.log_interaction("q", "a")
    assert store.stats() == {
        "path": str(store.path),
        "schema_version": len(MIGRATIONS),
        "samples": [
            {"split": "test", "task_type": "math", "count": 5},
            {"split": "train", "task_type": "math", "count": 45},
        ],
        "runs": [{"kind": "train", "status": "interrupted", "count": 1}],
        "metrics": 2,
        "interactions": 1,
        "experiments": 0,
    }


def test_an_experiment_files_its_runs_by_rung_seed_role_and_step(store):
    experiment = store.start_experiment("ablation", "/runs/a", {"seeds": 2})
    train = store.start_run("train", {}, model="m")
    evaluation = store.start_run("eval", {}, model="m/ck")
    store.add_experiment_run(experiment, train, rung="grpo", seed=1, role="train")
    store.add_experiment_run(experiment, evaluation, rung="grpo", seed=1, role="eval", step=5)
    store.add_experiment_run(experiment, train, rung="grpo", seed=1, role="train")  # refiled
    store.finish_run(train, "completed")
    filed = store.experiment_runs(experiment)
    assert [(r["rung"], r["seed"], r["role"], r["step"], r["status"]) for r in filed] == [
        ("grpo", 1, "eval", 5, "running"), ("grpo", 1, "train", 0, "completed"),
    ]  # fmt: skip
    assert store.experiments("/runs/a")[0]["settings"] == {"seeds": 2}
    store.set_experiment_status(experiment, "interrupted")
    got = store.get_experiment(experiment)
    assert got["status"] == "interrupted" and got["ended_at"] is not None
    store.set_experiment_status(experiment, "running")
    assert store.get_experiment(experiment)["ended_at"] is None
    with pytest.raises(ValueError, match="role"):
        store.add_experiment_run(experiment, train, rung="grpo", seed=1, role="other")
    with pytest.raises(DapoError, match="no experiment"):
        store.get_experiment("nope")
    assert store.stats()["experiments"] == 1


# ------------------------------------------------------------------------- concurrency

STEPS = 150


def _log_steps(path, start, kind, busy_timeout_s):
    with Store(path, busy_timeout_s=busy_timeout_s) as s:
        start.wait(timeout=30)  # all at once, while the parent still holds the write lock
        run_id = s.start_run(kind, {}, model="tiny")
        for step in range(STEPS):
            s.log_metrics(run_id, step, {"loss": 1.0, "reward": 0.0})
        s.finish_run(run_id, "completed")


def test_concurrent_writers_wait_for_each_other_and_all_rows_land(tmp_path):
    path = tmp_path / "dapo.db"
    Store(path).close()
    ctx = multiprocessing.get_context("fork")  # fork before any connection is open here
    start = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_log_steps, args=(path, start, kind, 30.0)) for kind in ("train", "eval")
    ]
    for p in procs:
        p.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # like a long write by a third process
    start.wait(timeout=30)
    time.sleep(0.3)
    blocker.execute("COMMIT")
    blocker.close()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store(path) as s:
        runs = s.runs()
        assert sorted(r["kind"] for r in runs) == ["eval", "train"]
        assert all(r["status"] == "completed" for r in runs)
        for run in runs:
            assert [m["step"] for m in s.metrics(run["id"], "loss")] == list(range(STEPS))
        assert s.stats()["metrics"] == 2 * 2 * STEPS
