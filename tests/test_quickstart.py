"""`dapo quickstart` runs every stage and closes with the before/after table."""

import json

import pytest
from typer.testing import CliRunner

from dapo_cli.cli.app import app
from dapo_cli.store import Store


def small_quickstart(workdir):
    """The quickstart's arguments for a run of seconds."""
    return ["quickstart", "--workdir", str(workdir), "--num-samples", "120", "--sft-steps", "3",
            "--sft-batch-size", "4",
            "--steps", "1", "--eval-prompts", "4", "--k", "2",
            "--set", "algorithm.dynamic_sampling=false", "--set", "rollout.max_new_tokens=8",
            "--set", "algorithm.overlong_cache_len=2",
            "--set", "train.train_batch_size=2", "--set", "train.mini_batch_size=2",
            "--set", "rollout.group_size=2"]  # fmt: skip


def test_quickstart_runs_the_whole_pipeline(tmp_path, monkeypatch):
    monkeypatch.delenv("DAPO_HOME", raising=False)  # a new user's environment
    monkeypatch.chdir(tmp_path.parent)
    tmp_path = tmp_path / "work"  # --workdir elsewhere than the current folder
    result = CliRunner().invoke(app, small_quickstart(tmp_path), terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    for stage in ("1/5 data", "2/5 warm start", "3/5 DAPO", "4/5 evaluation", "5/5 summary"):
        assert stage in out
    assert "$ dapo gen-data --num-samples 120" in out  # each stage shows its own command
    assert "--steps 3 --batch-size 4" in out
    assert out.count("--dtype float32") == 3  # the preset's dtype, in sft, train and eval
    assert "held-out accuracy, warm start → DAPO" in out and "pts" in out and "total" in out
    assert f"dapo chat --model {tmp_path / 'models' / 'checkpoints' / 'dapo_final'}" in out
    assert (tmp_path / "models" / "checkpoints" / "dapo_final" / "config.json").is_file()
    assert (tmp_path / "models" / "embedded" / "tiny-1m" / "config.json").is_file()
    assert not (tmp_path.parent / "models").exists()  # nothing built in the current folder
    evals = json.loads((tmp_path / "data" / "eval.json").read_text())
    assert [m["model"] for m in evals["models"]] == [
        str(tmp_path / "models" / "quickstart-warm"),
        str(tmp_path / "models" / "checkpoints" / "dapo_final"),
    ]
    with Store(tmp_path / "data" / "dapo.db", create=False) as store:
        kinds = [r["kind"] for r in store.runs()]
        assert kinds.count("eval") == 2 and "sft" in kinds and "train" in kinds
        assert {s["split"] for s in store.samples()} == {"train", "test"}
        logs = sorted(p.name for p in (tmp_path / "data" / "logs").iterdir())
        assert logs == sorted(f"{r['kind']}-{r['id']}.log" for r in store.runs())  # each run's


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_quickstart_dtype_reaches_every_stage(tmp_path, monkeypatch, dtype):
    """--dtype is each stage's --dtype: the warm start and the DAPO checkpoint are saved in
    it, the commands shown carry it, and the evaluation records it."""
    monkeypatch.setenv("DAPO_HOME", str(tmp_path / "models"))
    args = small_quickstart(tmp_path) + ["--dtype", dtype]
    result = CliRunner().invoke(app, args, terminal_width=300)
    assert result.exit_code == 0, result.output
    shown = [line for line in result.output.splitlines() if line.startswith("$ dapo ")]
    assert sum(f"--dtype {dtype}" in line for line in shown) == 3  # sft, train, eval
    for saved in ("quickstart-warm", "checkpoints/dapo_final"):
        config = json.loads((tmp_path / "models" / saved / "config.json").read_text())
        assert config["dtype"] == dtype, saved
    with Store(tmp_path / "data" / "dapo.db", create=False) as store:
        assert {r["config"]["dtype"] for r in store.runs("eval")} == {dtype}


def test_quickstart_rejects_bad_sizes(tmp_path):
    result = CliRunner().invoke(app, ["quickstart", "--workdir", str(tmp_path), "--steps", "0"])
    assert result.exit_code == 1
    assert "must be >= 1" in result.output
    assert not (tmp_path / "data").exists()
