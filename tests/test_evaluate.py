"""avg@k and pass@k, checked by hand; `dapo eval` compares models on the same prompts."""

import json
import os
import subprocess
import sys
from math import comb

import pytest
from typer.testing import CliRunner

from dapo_cli.cli.app import app
from dapo_cli.evaluate import pass_at_k, summarize
from dapo_cli.store import Store


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (8, 0, 1, 0.0),
        (8, 8, 8, 1.0),
        (8, 2, 1, 2 / 8),  # pass@1 is the mean accuracy
        (4, 1, 2, 1 - comb(3, 2) / comb(4, 2)),  # 1 - 3/6 = 0.5
        (5, 2, 3, 1 - comb(3, 3) / comb(5, 3)),  # 1 - 1/10 = 0.9
        (8, 7, 2, 1.0),  # fewer wrong samples than draws
    ],
)
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_summarize_per_task_and_overall():
    rows = []
    for pid, task, correct in (("a", "math", [1, 0]), ("b", "math", [0, 0]), ("c", "code", [1, 1])):
        for i, ok in enumerate(correct):
            rows.append({"id": pid, "task_type": task, "sample_index": i, "correct": bool(ok),
                         "reward": 1.0 if ok else -1.0, "length": 3 + i,
                         "truncated": False})  # fmt: skip
    s = summarize(rows, 2)
    assert s["math"]["avg@2"] == 0.25 and s["math"]["pass@2"] == 0.5
    assert s["code"]["avg@2"] == 1.0 and s["code"]["pass@2"] == 1.0
    assert s["all"]["avg@2"] == pytest.approx(0.5) and s["all"]["prompts"] == 3
    assert s["all"]["length_max"] == 4 and list(s)[-1] == "all"


@pytest.fixture(scope="module")
def math_file(tmp_path_factory):
    from dapo_cli.datagen import generate_dataset
    from dapo_cli.records import write_records

    path = tmp_path_factory.mktemp("eval") / "math.jsonl"
    write_records(path, generate_dataset(40, ["math"], seed=3, test_fraction=0.25))
    return path


def test_cli_eval_two_models_side_by_side(tmp_path, math_file):
    out = tmp_path / "results.json"
    db = tmp_path / "d.db"
    result = CliRunner().invoke(app, [
        "eval", "--model", "tiny-1m", "--model", "tiny-1m", "--data", str(math_file),
        "--k", "2", "--max-new-tokens", "4", "--output", str(out), "--db-path", str(db),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "avg@2" in result.output and "Δ avg@2" in result.output
    payload = json.loads(out.read_text())
    first, second = payload["models"]
    # the same model, prompts and seed: the same completions
    assert [r["completion"] for r in first["samples"]] == [
        r["completion"] for r in second["samples"]
    ]
    assert len(first["samples"]) == 10 * 2  # 10 test prompts, k = 2
    runs = Store(db, create=False).runs("eval")
    assert len(runs) == 2 and all(r["status"] == "completed" for r in runs)
    assert runs[0]["config"]["prompts"] == 10
    names = {m["name"] for m in Store(db, create=False).metrics(runs[0]["id"])}
    assert {"all/avg@2", "all/pass@2", "math/avg@2"} <= names


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "0"], "--k must be at least 1"),
        (["--split", "validation"], "has no samples in split 'validation'"),
        (["--task-types", "code"], "no test samples of task type(s) code"),
        (["--model", "/no/such/model"], "does not exist"),
    ],
)
def test_cli_eval_bad_input_is_one_line(tmp_path, math_file, args, message):
    base = ["eval", "--data", str(math_file), "--db-path", str(tmp_path / "d.db")]
    if "--model" not in args:
        base += ["--model", "tiny-1m"]
    result = CliRunner().invoke(app, [*base, *args])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_eval_through_a_pipe_keeps_every_figure_whole(tmp_path, math_file):
    """Three models, output to a pipe at 80 columns (a log, CI): no figure is cut to '…'."""
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "dapo_cli", "eval", "--model", "tiny-1m", "--model", "tiny-1m",
         "--model", "tiny-1m", "--data", str(math_file), "--k", "2", "--max-new-tokens", "4",
         "--db-path", str(tmp_path / "d.db"), "--output", str(tmp_path / "r.json")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    summary = json.loads((tmp_path / "r.json").read_text())["models"][0]["summary"]
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith("all"))
    want = [f"{summary['all']['avg@2']:.3f}", f"{summary['all']['pass@2']:.3f}"]
    assert all(row.count(figure) >= 3 for figure in want), row  # each model's, whole


def test_eval_json_prints_only_the_summary_and_every_run_has_a_log(tmp_path, math_file):
    db = tmp_path / "d.db"
    result = CliRunner().invoke(app, [
        "eval", "--model", "tiny-1m", "--data", str(math_file), "--k", "2",
        "--max-new-tokens", "4", "--db-path", str(db), "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # stdout is the JSON and nothing else
    (model,) = payload["models"]
    assert model["model"] == "tiny-1m" and "samples" not in model
    assert 0 <= model["summary"]["all"]["avg@2"] <= 1 and payload["settings"]["k"] == 2
    log = (tmp_path / "logs" / f"eval-{model['run_id']}.log").read_text()
    assert "eval of tiny-1m" in log and f"avg@2={model['summary']['all']['avg@2']:.6g}" in log
