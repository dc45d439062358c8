"""Runs that never lose their work: a failure after training began keeps what was trained,
a saturated run stops as converged, SIGTERM is Ctrl-C, a full disk or a broken checkpoint is
one line, and several commands write to one store at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import CrashAt, make_config, weights
from typer.testing import CliRunner

from dapo_cli import step as one_step
from dapo_cli.cli.app import app
from dapo_cli.config import load_config
from dapo_cli.errors import DapoError
from dapo_cli.models import embedded_base
from dapo_cli.rewards import register_verifier
from dapo_cli.run import run_training
from dapo_cli.scale import checkpoint as ckpt
from dapo_cli.store import Store
from dapo_cli.tasks.base import Score

register_verifier("test-always", lambda s, c: Score.binary(True))


def _failing_at(call: int, real, exc=RuntimeError("boom")):
    """``real`` that raises on its ``call``-th call, after doing its work (so the random
    streams and the data position have moved when it fails)."""
    calls = [0]

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == call:
            raise exc
        return out

    return wrapper


def test_a_failure_inside_a_step_saves_the_last_good_state_and_resume_finishes_it(
    tmp_path, data_file, monkeypatch
):
    """The quickstart saves only at the end: a step that fails before its update must not
    throw away the steps before it. The saved state is the one before the failed step
    (data position and random streams put back), so the resumed run is the uninterrupted
    one."""
    extra = ("train.steps=4", "output.save_every=0")
    straight = run_training(make_config(tmp_path / "a", data_file, *extra))
    cfg = make_config(tmp_path / "b", data_file, *extra)
    monkeypatch.setattr(one_step, "collect_batch", _failing_at(3, one_step.collect_batch))
    said = CrashAt(None)
    with pytest.raises(RuntimeError, match="boom"):
        run_training(cfg, observer=said)
    target = ckpt.step_dir(tmp_path / "b" / "ck", 2)
    command = f"dapo train --config {tmp_path / 'b' / 'ck' / 'config.yaml'} --resume"
    assert any(f"saved the last good state (step 2) to {target}; continue: {command}" in m
               for m in said.said), said.said  # fmt: skip
    assert [p for _, p in ckpt.list_checkpoints(tmp_path / "b" / "ck")] == [target]
    monkeypatch.undo()
    assert load_config(tmp_path / "b" / "ck" / "config.yaml") == cfg  # what the command reads
    resumed = run_training(cfg, resume=True)
    a, b = weights(straight.final_dir), weights(resumed.final_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"


def test_a_failure_inside_an_update_names_the_latest_checkpoint(tmp_path, data_file, monkeypatch):
    """Once the failed step's optimiser has moved, its weights are no good state to save:
    the latest checkpoint is named instead."""
    cfg = make_config(tmp_path, data_file, "train.steps=4", "output.save_every=2")
    # two mini-batches a step, each measures its gradient norm before its optimiser step:
    # the 6th is step 3's second, after step 3's first update
    monkeypatch.setattr(one_step, "full_value", _failing_at(6, one_step.full_value))
    said = CrashAt(None)
    with pytest.raises(RuntimeError, match="boom"):
        run_training(cfg, observer=said)
    latest = ckpt.step_dir(tmp_path / "ck", 2)
    assert any(f"the latest checkpoint is {latest}" in m for m in said.said), said.said
    assert ckpt.latest_checkpoint(tmp_path / "ck") == latest


def _always_correct(tmp_path, data_file):
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    path = tmp_path / "always.jsonl"
    path.write_text("".join(json.dumps({**r, "task_type": "test-always"}) + "\n" for r in rows))
    return path


def test_a_run_that_has_learned_its_data_stops_as_converged(tmp_path, data_file):
    """Every group all-correct: dynamic sampling cannot fill a batch. That is a result (the
    final checkpoint is saved, the run is 'converged'), not a crash; the strict behaviour is
    one switch away."""
    data = _always_correct(tmp_path, data_file)
    args = ["train", "--data", str(data), "--steps", "5", "--output-dir", str(tmp_path / "ck"),
            "--db-path", str(tmp_path / "d.db"), "--group-size", "4",
            "--set", "warm_start.enabled=off", "--set", "rollout.max_new_tokens=4",
            "--set", "algorithm.overlong_cache_len=2", "--set", "train.train_batch_size=2",
            "--set", "train.gen_batch_size=4", "--set", "train.mini_batch_size=2",
            "--set", "train.max_num_gen_batches=2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "stopped early at step 0: converged" in result.output
    assert "100% of the groups were all-correct" in result.output
    assert (tmp_path / "ck" / "dapo_final" / "config.json").is_file()
    assert Store(tmp_path / "d.db").runs("train")[-1]["status"] == "converged"
    strict = CliRunner().invoke(app, [*args, "--set", "train.on_gen_cap=error"])
    assert strict.exit_code == 1 and "100% of the groups were all-correct" in strict.stderr


def test_a_partial_batch_is_trained_logged_and_shown(tmp_path, data_file):
    """Half the prompts always right (no signal), half with signal: one generation batch a
    step rarely holds the four prompts with signal a batch wants; the step trains on those
    it found (batch_fill < 1) and says so."""
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    path = tmp_path / "half.jsonl"
    path.write_text("".join(
        json.dumps({**r, "task_type": "test-always" if i % 2 else r["task_type"]}) + "\n"
        for i, r in enumerate(rows)
    ))  # fmt: skip
    cfg = make_config(
        tmp_path, path, "train.train_batch_size=4", "train.mini_batch_size=4",
        "train.gen_batch_size=4", "train.max_num_gen_batches=1", "train.steps=4",
    )  # fmt: skip
    result = run_training(cfg)
    fills = [h["batch_fill"] for h in result.history]
    assert result.status == "completed" and any(f < 1 for f in fills)
    assert all(0 < f <= 1 for f in fills)
    from dapo_cli.cli.train import format_step

    partial = next(h for h in result.history if h["batch_fill"] < 1)
    assert f"partial {partial['batch_fill']:.2f}" in format_step(partial)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, data_file, monkeypatch):
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "dapo_final" in str(f):
            raise OSError(28, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    args = ["train", "--data", str(data_file), "--steps", "3", "--output-dir",
            str(tmp_path / "ck"), "--db-path", str(tmp_path / "d.db"), "--group-size", "4",
            "--set", "warm_start.enabled=off", "--set", "rollout.max_new_tokens=8",
            "--set", "algorithm.overlong_cache_len=2", "--set", "train.train_batch_size=2",
            "--set", "train.gen_batch_size=4", "--set", "train.mini_batch_size=2",
            "--set", "output.save_every=2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    step2 = tmp_path / "ck" / "step_000002"
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert f"{step2} is intact" in lines[0]
    left = sorted(
        p.name for p in (tmp_path / "ck").iterdir() if p.is_dir() and p.name != "tensorboard"
    )
    assert left == ["step_000002"]  # no partial folder left behind
    path, state, skipped = ckpt.resume_point(tmp_path / "ck")
    assert path == step2 and state["step"] == 2 and skipped == []


def test_resume_passes_over_a_corrupt_checkpoint_or_names_the_file(tmp_path, data_file):
    cfg = make_config(tmp_path, data_file, "train.steps=5", "output.save_every=2")
    run_training(cfg)
    out = tmp_path / "ck"
    step2, step4 = ckpt.step_dir(out, 2), ckpt.step_dir(out, 4)
    state = step4 / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])  # truncated
    said = CrashAt(None)
    resumed = run_training(cfg, resume=True, observer=said)
    assert any(f"passed over a broken checkpoint: {state} is unreadable" in m for m in said.said)
    assert resumed.status == "completed" and len(resumed.history) == 3  # steps 3, 4, 5
    for path in (step2, step4):
        weights_file = path / "model.safetensors"
        weights_file.write_bytes(weights_file.read_bytes()[:-1000])
    with pytest.raises(DapoError) as err:
        run_training(cfg, resume=True)
    message = str(err.value)
    assert "\n" not in message and "model.safetensors is unreadable" in message


@pytest.fixture(scope="module")
def puzzles(tmp_path_factory):
    """Train and test splits of a built-in task, for real processes (which do not have the
    verifiers these tests register)."""
    from dapo_cli.datagen import generate_dataset
    from dapo_cli.records import write_records

    path = tmp_path_factory.mktemp("puzzles") / "puzzles.jsonl"
    write_records(path, generate_dataset(200, ["puzzle"], seed=0, test_fraction=0.2))
    return path


def _dapo(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "dapo_cli", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, **kwargs,
    )  # fmt: skip


TRAIN = ("--group-size", "4", "--set", "warm_start.enabled=off", "--set",
         "rollout.max_new_tokens=8", "--set", "algorithm.overlong_cache_len=2", "--set",
         "train.train_batch_size=2", "--set", "train.gen_batch_size=4", "--set",
         "train.mini_batch_size=2", "--set", "algorithm.dynamic_sampling=false")  # fmt: skip


def test_sigterm_finishes_the_step_saves_and_exits_143(tmp_path, puzzles):
    out = tmp_path / "ck"
    proc = _dapo("train", "--data", str(puzzles), "--steps", "500", "--output-dir", str(out),
                 "--db-path", str(tmp_path / "d.db"), *TRAIN)  # fmt: skip
    lines = []
    for line in proc.stdout:  # wait for the first step, then ask it to stop
        lines.append(line)
        if line.startswith("step    1"):
            proc.send_signal(signal.SIGTERM)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, (stdout, stderr)
    assert "SIGTERM: finishing this step" in "".join(lines) + stdout
    latest = ckpt.latest_checkpoint(out)
    command = f"dapo train --config {out / 'config.yaml'} --resume"
    assert latest is not None and f"continue: {command}" in stdout
    assert load_config(out / "config.yaml").train.steps == 500
    step = ckpt.load_trainer_state(latest)["step"]
    assert 1 <= step < 500
    assert Store(tmp_path / "d.db").runs("train")[-1]["status"] == "interrupted"


def test_train_eval_and_chat_write_to_one_store_at_once(tmp_path, puzzles):
    """Three real processes on one SQLite store: no lock error, and every row is there."""
    db = tmp_path / "shared.db"
    model = str(embedded_base())
    procs = [
        _dapo("train", "--data", str(puzzles), "--steps", "6", "--output-dir",
              str(tmp_path / "ck"), "--db-path", str(db), *TRAIN),
        _dapo("eval", "--model", model, "--data", str(puzzles), "--db-path", str(db), "--k", "2",
              "--max-new-tokens", "8"),
        *(_dapo("chat", "--model", model, "--prompt", f"Hello {i}", "--db-path", str(db),
                "--max-new-tokens", "8") for i in range(3)),
    ]  # fmt: skip
    deadline = time.monotonic() + 300
    for proc in procs:
        _, stderr = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        assert proc.returncode == 0, stderr
        assert "locked" not in stderr
    store = Store(db)
    runs = {r["kind"]: r for r in store.db["runs"].rows}
    assert runs["train"]["status"] == runs["eval"]["status"] == "completed"
    assert len(store.metrics(runs["train"]["id"], "reward_mean")) == 6
    assert store.db["interactions"].count == 3
