"""Multi-process training (issue 5): two CPU processes under ``torch.distributed.run`` take
exactly the single-process update, and ``dapo train`` runs end to end on two processes with
only rank 0 writing."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dapo_cli import step as one_step
from dapo_cli.config import load_config
from dapo_cli.models import embedded_base
from dapo_cli.policy import load_policy
from dapo_cli.rewards import register_verifier
from dapo_cli.scale.distributed import Dist
from dapo_cli.store import Store
from dapo_cli.tasks.base import Score

register_verifier("test-parity", lambda s, c: Score.binary(len(c) % 2 == 0))
WORKER = Path(__file__).with_name("dist_worker.py")


FSDP_CONFIG = Path(__file__).resolve().parents[2] / "templates" / "accelerate" / "fsdp.yaml"


def launch(
    *args: str, timeout: int = 300, fsdp: bool = False, env: dict | None = None, processes=2
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 tests/scale/dist_worker.py ARGS`` (gloo, CPU), or
    with ``fsdp`` ``accelerate launch --config_file templates/accelerate/fsdp.yaml ...``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(processes), str(WORKER), *args]  # fmt: skip
    if fsdp:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(FSDP_CONFIG), "--num_processes", str(processes), "--main_process_port", "0",
               str(WORKER), *args]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_shards_cover_every_item_once():
    for n in range(0, 9):
        for world in (1, 2, 3):
            parts = [list(range(n))[Dist(r, world).shard(n)] for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize(
    "parallelism, processes", [("ddp", 2), ("fsdp", 2), ("accelerate-fsdp", 1)]
)
def test_two_processes_take_the_single_process_update(tmp_path, data_file, parallelism, processes):
    """2 processes (DDP or FSDP) take the single-process step; so does FSDP over one process,
    chosen by ``accelerate launch --num_processes 1`` with the FSDP config."""
    launched = parallelism.startswith("accelerate")
    if launched:
        pytest.importorskip("accelerate")
    overrides = [
        f"train.parallelism={'auto' if launched else parallelism}", f"data.path={data_file}",
        "model.dtype=float32",  # the same sums in either process layout, to fp32 rounding
        "rollout.group_size=4",
        "rollout.max_new_tokens=12",
        "algorithm.overlong_cache_len=4", "train.train_batch_size=6", "train.gen_batch_size=6",
        "train.mini_batch_size=3",
        "train.lr=1.0", "algorithm.dynamic_sampling=false",
        "algorithm.overlong_filtering=false",  # a random model's responses are all truncated
        # FSDP: one row per pass, and (below) one row fewer in the mini-batch of prompt 0, so
        # the ranks hold 6 and 5 rows of it: rank 1 must run an empty pass to keep in step
        f"train.micro_batch_size={1 if parallelism == 'fsdp' else 5}",
    ]  # fmt: skip
    config = load_config(None, overrides)
    model_dir = embedded_base("tiny-1m")
    policy = load_policy(str(model_dir), device="cpu", dtype="float32")  # as the processes
    samples = [json.loads(line) for line in data_file.read_text().splitlines()]
    stream = one_step.PromptStream(samples, seed=0)
    batch = one_step.collect_batch(policy, stream, config, torch.Generator().manual_seed(0))
    assert batch.advantages.abs().sum() > 0  # a batch with signal
    if parallelism == "fsdp":
        batch.advantages[1] = 0.0  # a row the update skips
    batch.stats.pop("entropy")  # as from vLLM: the update measures it (summed over ranks)
    torch.save(batch, tmp_path / "batch.pt")

    # Plain SGD, so the weights move by the gradient itself (Adam's first steps are nearly
    # lr * sign(grad), which would hide a wrongly scaled gradient).
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=1.0)
    single = one_step.update(policy, optimizer, batch, config, random.Random(0))
    assert single["updates"] == 2  # two mini-batches: two optimiser steps

    out = tmp_path / "two.pt"
    # (FSDP here keeps each layer gathered from forward to backward; the accelerate test below
    # runs the default, resharding after the forward)
    launch("update", str(tmp_path / "batch.pt"), str(model_dir), str(out), json.dumps(overrides),
           env={"FSDP_RESHARD_AFTER_FORWARD": "false"}, processes=processes,
           fsdp=launched)  # fmt: skip
    two = torch.load(out, weights_only=False)
    assert two["sharded"] == (parallelism != "ddp")
    after = policy.model.state_dict()
    step_one = torch.cat([(after[k] - before[k]).flatten() for k in before])
    step_two = torch.cat([(two["state"][k] - before[k]).flatten() for k in before])
    assert step_one.norm() > 0
    assert float((step_two - step_one).norm() / step_one.norm()) <= 1e-5
    for name, p in after.items():
        rel = float((two["state"][name] - p).norm() / p.norm().clamp(min=1e-12))
        assert rel <= 1e-5, (name, rel)
    for key in ("loss", "entropy", "clip_frac_high", "grad_norm"):
        assert two["metrics"][key] == pytest.approx(single[key], rel=1e-4, abs=1e-7), key


def test_dapo_train_on_two_processes(tmp_path, data_file):
    db = tmp_path / "d.db"
    done = launch(
        "train", "--data", str(data_file), "--db-path", str(db), "--steps", "3",
        "--group-size", "4", "--output-dir", str(tmp_path / "ck"),
        "--set", "warm_start.enabled=off", "--set", "rollout.max_new_tokens=8",
        "--set", "algorithm.overlong_cache_len=2", "--set", "train.train_batch_size=4",
        "--set", "train.gen_batch_size=4", "--set", "train.mini_batch_size=2",
        "--set", "output.save_every=2",
    )  # fmt: skip
    assert done.stdout.count("step    3") == 1  # only rank 0 prints
    runs = list(Store(db).db["runs"].rows)
    assert len(runs) == 1 and runs[0]["status"] == "completed"
    assert Store(db).db["metrics"].count == 3 * len(
        {r["name"] for r in Store(db).db["metrics"].rows}
    )
    state = torch.load(tmp_path / "ck" / "step_000002" / "trainer_state.pt", weights_only=False)
    assert len(state["generators"]) == 2
    assert not torch.equal(state["generators"][0], state["generators"][1])
    AutoModelForCausalLM.from_pretrained(tmp_path / "ck" / "dapo_final")


def test_fsdp_under_accelerate_launch_trains_as_ddp_does(tmp_path, data_file):
    """``accelerate launch`` with the shipped FSDP config: the same 3 steps (AdamW, sampling
    from the refreshed rollout copy, checkpoints) as plain data parallelism, and a
    checkpoint whose optimiser state is whole, in the unsharded format, so either can resume
    the other."""
    pytest.importorskip("accelerate")

    def train(name: str, *extra: str, fsdp: bool = False):
        return launch(
            "train", "--data", str(data_file), "--db-path", str(tmp_path / f"{name}.db"),
            "--steps", "3", "--group-size", "4", "--output-dir", str(tmp_path / name),
            "--set", "warm_start.enabled=off", "--set", "rollout.max_new_tokens=8",
            "--set", "algorithm.overlong_cache_len=2",
            "--set", "algorithm.overlong_filtering=false", "--set", "train.train_batch_size=4",
            "--set", "train.gen_batch_size=4", "--set", "train.mini_batch_size=2",
            "--set", "train.lr=1e-3", "--set", "output.save_every=2",
            "--set", "model.dtype=float32", *extra, fsdp=fsdp,  # compared to fp32 rounding
        )  # fmt: skip

    ddp, fsdp = train("ddp"), train("fsdp", fsdp=True)
    assert "FSDP: parameters, gradients and optimiser state sharded over 2" in fsdp.stdout
    assert "FSDP" not in ddp.stdout
    final = {}
    for name in ("ddp", "fsdp"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name / "dapo_final")
        final[name] = dict(model.named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(embedded_base("tiny-1m")).named_parameters())
    # AdamW's first steps are about lr * sign(gradient), so float-level differences in the
    # summation order of tiny gradient entries show up magnified: compare the whole update
    step = {n: torch.cat([(final[n][k] - base[k]).flatten() for k in base]) for n in final}
    assert step["ddp"].norm() > 0
    assert float((step["fsdp"] - step["ddp"]).norm() / step["ddp"].norm()) <= 1e-4  # 3e-6 here

    states = {
        name: torch.load(tmp_path / name / "step_000002" / "trainer_state.pt", weights_only=False)
        for name in ("ddp", "fsdp")
    }
    a, b = states["ddp"]["optimizer"], states["fsdp"]["optimizer"]
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for i in a["state"]:
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = a["state"][i][key], b["state"][i][key]
            assert x.shape == y.shape  # whole, not a shard
            assert float((x - y).norm()) <= 1e-4 * float(x.norm()) + 1e-12, (i, key)

    # the FSDP checkpoint resumes under DDP
    resumed = train("fsdp", "--resume", "--steps", "4")
    assert "resumed from" in resumed.stdout and "step    4" in resumed.stdout

    # bf16 under FSDP: bf16 compute on fp32 shards; the checkpoint holds the bf16 policy and
    # its trainer state the whole fp32 master weights, of which at lr 1e-6 nearly all moved
    # (in bf16 itself few would)
    low = train("fsdp16", "--set", "model.dtype=bfloat16", "--set", "train.lr=1e-6", fsdp=True)
    assert "mixed precision: bfloat16 compute, fp32 master weights" in low.stdout
    final = tmp_path / "fsdp16" / "dapo_final"
    saved = load_file(next(final.glob("*.safetensors")))
    assert saved.keys() == base.keys() and all(v.dtype == torch.bfloat16 for v in saved.values())
    master = torch.load(final / "trainer_state.pt", weights_only=False)["master_weights"]
    assert all(master[k].dtype == torch.float32 and master[k].shape == base[k].shape for k in base)
    moved = sum(int((master[k] != base[k]).sum()) for k in base)
    assert moved > 0.5 * sum(v.numel() for v in base.values())


def test_fsdp_is_chosen_by_accelerate_or_the_config_and_reads_its_settings(monkeypatch):
    from dapo_cli.errors import DapoError
    from dapo_cli.scale import trained_model

    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_RESHARD_AFTER_FORWARD",
                 "FSDP_OFFLOAD_PARAMS", "FSDP_ACTIVATION_CHECKPOINTING"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    two = Dist(rank=0, world=2)
    assert not trained_model.wants_fsdp("auto", two) and trained_model.wants_fsdp("fsdp", two)
    one = Dist()  # FSDP over one process too (accelerate launch --num_processes 1)
    assert trained_model.wants_fsdp("fsdp", one) and not trained_model.wants_fsdp("auto", one)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets
    assert trained_model.wants_fsdp("auto", two) and not trained_model.wants_fsdp("ddp", two)
    assert trained_model.wants_fsdp("auto", one)
    assert trained_model.fsdp_options() == {
        "reshard_after_forward": True, "offload_params": False, "activation_checkpointing": False
    }  # fmt: skip
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    opts = trained_model.fsdp_options()
    assert not opts["reshard_after_forward"] and opts["activation_checkpointing"]
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(DapoError, match="supports FSDP2 only"):
        trained_model.fsdp_options()


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    """NCCL needs a GPU per process: the second process on a one-GPU machine stops with a
    message that says what to do, before any process group is made."""
    from dapo_cli.errors import DapoError
    from dapo_cli.scale import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("must not be reached"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DapoError, match=r"process 1 .* \(1 visible\).*at most 1 process"):
        distributed.from_env()
    assert not torch.distributed.is_initialized()
