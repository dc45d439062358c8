"""Run by tests/scale/test_distributed.py under ``torch.distributed.run`` (2 CPU processes, gloo).

``update BATCH MODEL_DIR OUT CONFIG_JSON``: one ``one_step.update`` of a saved batch with
plain SGD (FSDP when the config or the environment asks for it); rank 0 saves the weights
(of the rollout model) and metrics.
``train ARGS...``: the ``dapo train`` command itself.
"""

import json
import random
import sys

import torch

from dapo_cli.rewards import register_verifier
from dapo_cli.tasks.base import Score

register_verifier("test-parity", lambda s, c: Score.binary(len(c) % 2 == 0))


def run_update(batch_file: str, model_dir: str, out: str, overrides: str) -> None:
    from dapo_cli import step as one_step
    from dapo_cli.config import load_config
    from dapo_cli.policy import load_policy
    from dapo_cli.scale import distributed, trained_model

    dist = distributed.from_env()
    distributed.GRAD_BUCKET_BYTES = 64_000  # the embedded model's gradients in ~70 buckets
    config = load_config(None, json.loads(overrides))
    policy = load_policy(model_dir, dtype=config.model.dtype)
    trained = trained_model.prepare_trained(
        policy.model, dist, parallelism=config.train.parallelism
    )
    if trained_model.wants_fsdp(config.train.parallelism, dist):
        assert trained_model.is_sharded(trained)
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.train.lr)
    batch = torch.load(batch_file, weights_only=False)
    rng = random.Random(0)
    metrics = one_step.update(policy, optimizer, batch, config, rng, dist=dist, model=trained)
    # under FSDP, policy.model is the rollout copy: its weights must be the updated ones
    if dist.main:
        state = policy.model.state_dict()
        torch.save(
            {"state": state, "metrics": metrics, "sharded": trained_model.is_sharded(trained)}, out
        )
    dist.close()


if __name__ == "__main__":
    if sys.argv[1] == "update":
        run_update(*sys.argv[2:6])
    else:
        from dapo_cli.cli.app import main

        sys.argv = ["dapo", *sys.argv[1:]]
        main()
