"""The supervised warm start: it lowers the loss on its data, and a bf16 policy is trained
through fp32 master weights (steps below bf16's resolution add up instead of vanishing)."""

import torch

from dapo_cli.datagen import generate_dataset
from dapo_cli.models import embedded_base
from dapo_cli.policy import load_policy
from dapo_cli.sft import supervised_warm_start


def _samples():
    return generate_dataset(64, ["math"], seed=0, test_fraction=0.0)


def test_warm_start_lowers_the_supervised_loss():
    policy = load_policy(str(embedded_base("tiny-1m")))
    first = []
    summary = supervised_warm_start(
        policy, _samples(), steps=30, batch_size=8, lr=3e-3, warmup=2,
        on_step=lambda step, loss: first.append(loss),
    )  # fmt: skip
    assert summary["steps"] == 30
    assert summary["loss_final"] < 0.7 * first[0]
    assert not policy.model.training  # back in eval mode for sampling


def test_bf16_policy_accumulates_its_steps_in_fp32():
    policy = load_policy(str(embedded_base("tiny-1m")), dtype="bfloat16")
    before = [p.detach().clone() for p in policy.model.parameters()]
    # 20 steps of lr 1e-5: each far below bf16's resolution at these weights (~1e-4), their
    # sum not: 73% of the weights move here; trained in bf16 itself, 15% did
    supervised_warm_start(policy, _samples(), steps=20, batch_size=8, lr=1e-5, warmup=1)
    after = list(policy.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in after)
    moved = sum(int((a != b).sum()) for a, b in zip(before, after, strict=True))
    assert moved > 0.5 * sum(p.numel() for p in before)


def test_the_warm_start_is_never_sharded_even_under_an_fsdp_launch():
    """The warm start runs in one process before training (rank 0 builds it under a launcher):
    an FSDP config in the environment must not turn it into FSDP over a group of one (under
    several processes that group would clash with the launcher's)."""
    import os
    import subprocess
    import sys

    code = (
        "import torch.distributed as td\n"
        "from dapo_cli.datagen import generate_dataset\n"
        "from dapo_cli.models import embedded_base\n"
        "from dapo_cli.policy import load_policy\n"
        "from dapo_cli.sft import supervised_warm_start\n"
        "policy = load_policy(str(embedded_base('tiny-1m')), device='cpu')\n"
        "data = generate_dataset(16, ['math'], seed=0, test_fraction=0.0)\n"
        "supervised_warm_start(policy, data, steps=2, batch_size=4, warmup=1)\n"
        "print('process group:', td.is_initialized())\n"
    )
    env = {**os.environ, "ACCELERATE_USE_FSDP": "true", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "process group: False" in done.stdout
