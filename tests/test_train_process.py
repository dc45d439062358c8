"""`dapo train` as a real process: kill -9 then --resume, and Ctrl-C saves and exits."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from dapo_cli.datagen import generate_dataset
from dapo_cli.records import write_records
from dapo_cli.scale.checkpoint import latest_checkpoint, prune_checkpoints, remove_leftovers
from dapo_cli.store import Store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def train_cmd(tmp_path, steps):
    data = tmp_path / "math.jsonl"
    if not data.exists():
        write_records(data, generate_dataset(60, ["math"], seed=1))
    return [
        sys.executable, "-m", "dapo_cli", "train", "--data", str(data), "--steps", str(steps),
        "--output-dir", str(tmp_path / "ck"), "--db-path", str(tmp_path / "d.db"),
        "--group-size", "2", "--set", "warm_start.enabled=off",
        "--set", "algorithm.dynamic_sampling=false", "--set", "rollout.max_new_tokens=6",
        "--set", "algorithm.overlong_cache_len=2", "--set", "train.train_batch_size=2",
        "--set", "train.mini_batch_size=2", "--set", "output.save_every=2",
    ]  # fmt: skip


def start_and_wait_for_a_checkpoint(tmp_path, steps=500):
    proc = subprocess.Popen(
        train_cmd(tmp_path, steps), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 180
    while latest_checkpoint(tmp_path / "ck") is None:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.2)
    return proc


def test_kill_dash_nine_then_resume(tmp_path):
    proc = start_and_wait_for_a_checkpoint(tmp_path)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(timeout=30)
    saved = latest_checkpoint(tmp_path / "ck")
    step = int(saved.name.split("_")[1])
    resumed = subprocess.run(
        [*train_cmd(tmp_path, step + 2), "--resume"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {saved}" in " ".join(resumed.stdout.split())
    assert (tmp_path / "ck" / "dapo_final" / "config.json").is_file()
    store = Store(tmp_path / "d.db", create=False)
    (run,) = store.runs("train")
    assert run["status"] == "completed"
    assert [r["step"] for r in store.metrics(run["id"], "reward_mean")] == list(range(1, step + 3))
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".tmp-")]


def test_leftovers_of_killed_saves_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f".tmp-step_000004-{dead.pid}", f".old-dapo_final-{dead.pid}"]
        names += [f".tmp-step_000006-{live.pid}", f".tmp-step_000008-{os.getpid()}"]
        for name in names:
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.safetensors").write_bytes(b"partial")
        (tmp_path / "step_000002").mkdir()
        removed = remove_leftovers(tmp_path)
        assert sorted(p.name for p in removed) == [
            f".old-dapo_final-{dead.pid}",
            f".tmp-step_000004-{dead.pid}",
        ]
        prune_checkpoints(tmp_path, keep=0)
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f".tmp-step_000006-{live.pid}",
            f".tmp-step_000008-{os.getpid()}",
            "step_000002",
        ]
    finally:
        live.kill()
        live.wait()


def test_ctrl_c_finishes_the_step_saves_and_exits(tmp_path):
    proc = start_and_wait_for_a_checkpoint(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    m = re.search(r"interrupted at step (\d+)", out)
    assert m, out
    step = int(m.group(1))
    assert latest_checkpoint(tmp_path / "ck").name == f"step_{step:06d}"
    assert "Traceback" not in out
    (run,) = Store(tmp_path / "d.db", create=False).runs("train")
    assert run["status"] == "interrupted"
    assert os.path.isdir(tmp_path / "ck" / f"step_{step:06d}")
