"""Reading and writing sample files: validation names file and line; writing is atomic."""

import json

import pytest

from dapo_cli.errors import DapoError, DataError
from dapo_cli.records import FIELDS, read_records, validate_record, write_records

GOOD = {"task_type": "math", "prompt": "What is 1 + 1?", "answer": "2", "verify": {}}


def test_validate_fills_defaults_and_id():
    rec = validate_record(GOOD)
    assert tuple(rec) == FIELDS
    assert rec["split"] == "train" and rec["difficulty"] is None
    assert len(rec["id"]) == 16
    # the id is a content hash: same task and prompt, same id
    assert validate_record(dict(GOOD))["id"] == rec["id"]
    assert validate_record({**GOOD, "prompt": "What is 1 + 2?"})["id"] != rec["id"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": 2}, "'answer' must be a string, got int"),
        ({"prompt": None}, "missing required field 'prompt'"),
        ({"prompt": "  "}, "'prompt' is empty"),
        ({"task_type": "poetry"}, "unknown task_type 'poetry'"),
        ({"verify": "[1, 2]"}, "'verify' must be an object"),
        ({"verify": "{nope"}, "'verify' is not valid JSON"),
        ({"split": "a b"}, "not a valid split name"),
        ({"id": 5}, "'id' must be a string"),
    ],
)
def test_validate_rejects(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate_record({**GOOD, **change})


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_round_trip_each_format(tmp_path, ext):
    records = [
        validate_record({**GOOD, "prompt": f"What is {i} + 1?", "answer": str(i + 1)})
        for i in range(5)
    ]
    records[0]["verify"] = {"expression": "0 + 1", "nested": {"b": [1, 2], "a": "é"}}
    path = tmp_path / f"data{ext}"
    assert write_records(path, records) == 5
    assert read_records(path) == records
    # equal records, equal bytes
    first = path.read_bytes()
    write_records(path, records)
    assert path.read_bytes() == first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({**GOOD, "prompt": f"p{i}"}) for i in range(3)]
    lines.insert(2, "{not json")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:3: not valid JSON"):
        read_records(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no records"),
        (b"\n\n", "holds no records"),
        (b'{"a": "\xff"}\n', r":1: not UTF-8"),
        (b"[1, 2]\n", r":1: expected a JSON object, got list"),
    ],
)
def test_jsonl_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_records(path)


def test_missing_directory_and_extension(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_records(tmp_path / "dir.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        read_records(tmp_path)
    with pytest.raises(DapoError, match="unsupported file type '.txt'"):
        read_records(tmp_path / "x.txt")


def test_huge_line_is_refused(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps(GOOD) + "\n")
        f.write(json.dumps({**GOOD, "prompt": "x" * (50 * 2**20)}) + "\n")
    with pytest.raises(DataError, match=r"huge\.jsonl:2: line longer than 16 MiB"):
        read_records(path)


def test_csv_errors(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("task_type,prompt\nmath,What?\n")
    with pytest.raises(DataError, match="header lacks column"):
        read_records(path)
    path.write_text('task_type,prompt,answer\nmath,"What is 1+1?",2\nmath,"Q",3,extra\n')
    with pytest.raises(DataError, match=r"d\.csv:3: more fields than the header"):
        read_records(path)


def test_write_failure_leaves_no_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DapoError, match="cannot write here"):
        write_records(blocker / "out.jsonl", [validate_record(GOOD)])


def test_written_files_get_the_umask_permissions_not_mkstemps_private_0600(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = tmp_path / "data.jsonl"
        write_records(path, [{"prompt": "2+2?", "answer": "4"}])
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
