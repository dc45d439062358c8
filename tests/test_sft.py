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
