"""Helpers the training tests share: rewards a random model can earn, a small training
config, a model's weights, and an observer that fails at a chosen step."""

import torch
from transformers import AutoModelForCausalLM

from dapo_cli.config import load_config
from dapo_cli.observer import TrainObserver
from dapo_cli.rewards import register_verifier
from dapo_cli.tasks.base import Score

# Rewards a random model can earn: an even number of characters is "correct", so groups are
# mixed and every step has signal. "test-never" is never correct.
register_verifier("test-parity", lambda s, c: Score.binary(len(c) % 2 == 0))
register_verifier("test-never", lambda s, c: Score.binary(False))
register_verifier("test-always", lambda s, c: Score.binary(True))


def make_config(tmp_path, data_file, *extra):
    return load_config(None, [
        f"data.path={data_file}", "warm_start.enabled=off", "rollout.group_size=4",
        "rollout.max_new_tokens=8", "algorithm.overlong_cache_len=2",
        "train.train_batch_size=2", "train.gen_batch_size=4", "train.mini_batch_size=1",
        "train.micro_batch_size=3", "train.steps=3", "train.lr=1e-2", "train.warmup_steps=0",
        f"output.output_dir={tmp_path / 'ck'}", f"output.db_path={tmp_path / 'd.db'}",
        "output.save_every=2", *extra,
    ])  # fmt: skip


def weights(model_or_dir):
    model = model_or_dir
    if not isinstance(model_or_dir, torch.nn.Module):
        model = AutoModelForCausalLM.from_pretrained(model_or_dir)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Crash(Exception):
    pass


class CrashAt(TrainObserver):
    def __init__(self, step, said=None):
        self.step, self.said = step, said if said is not None else []

    def message(self, text):
        self.said.append(text)

    def train_step(self, step, total, metrics):
        if step == self.step:
            raise Crash
