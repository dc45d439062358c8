"""Training end to end on the embedded tiny model: weights change, metrics land in the store,
checkpoints load with plain transformers, resume reproduces an uninterrupted run."""

import json
import math
import re

import pytest
import torch
from helpers import Crash, CrashAt, make_config, weights
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from dapo_cli import step as one_step
from dapo_cli.cli.app import app
from dapo_cli.config import load_config
from dapo_cli.errors import DapoError
from dapo_cli.models import embedded_base, resolve_dtype
from dapo_cli.rewards import register_verifier
from dapo_cli.run import TrainObserver, run_training
from dapo_cli.store import Store
from dapo_cli.tasks.base import Score


def test_training_changes_weights_logs_metrics_and_saves_a_loadable_model(tmp_path, data_file):
    result = run_training(make_config(tmp_path, data_file))
    assert result.status == "completed" and result.steps == 3
    before, after = weights(embedded_base()), weights(result.final_dir)
    assert any(not torch.equal(before[k], after[k]) for k in before), "weights did not change"

    store = Store(tmp_path / "d.db", create=False)
    run = store.get_run(result.run_id)
    assert run["status"] == "completed" and run["kind"] == "train"
    rows = store.metrics(result.run_id)
    assert sorted({r["step"] for r in rows}) == [1, 2, 3]
    names = {r["name"] for r in rows}
    for name in ("reward_mean", "accuracy", "response_length_mean", "response_length_max",
                 "truncation_rate", "entropy", "mean_token_prob", "clip_frac_low",
                 "clip_frac_high", "approx_kl", "loss", "grad_norm", "lr", "groups_filtered",
                 "gen_batches", "tokens_per_s", "step_time"):  # fmt: skip
        assert name in names, name
    # the saved checkpoint is a plain transformers model + tokenizer
    tok = AutoTokenizer.from_pretrained(result.final_dir)
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    ids = tok("Answer: 12", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == len(tok)
    assert (tmp_path / "ck" / "step_000002" / "trainer_state.pt").is_file()


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, data_file):
    straight = run_training(make_config(tmp_path / "a", data_file, "train.steps=4"))
    cfg = make_config(tmp_path / "b", data_file, "train.steps=4")
    said = []
    with pytest.raises(Crash):  # dies after step 3 (once it is done: it is saved as it dies)
        run_training(cfg, observer=CrashAt(3, said))
    assert any("saved the last good state (step 3)" in m and "--resume" in m for m in said)
    resumed = run_training(cfg, resume=True)
    assert resumed.status == "completed" and resumed.steps == 4
    a, b = weights(straight.final_dir), weights(resumed.final_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"
    assert [h["reward_mean"] for h in resumed.history] == [
        h["reward_mean"] for h in straight.history[3:]
    ]
    store = Store(tmp_path / "b" / "d.db", create=False)
    steps = [r["step"] for r in store.metrics(resumed.run_id, "reward_mean")]
    assert steps == [1, 2, 3, 4]  # step 3 of the crashed attempt was replaced, not duplicated


def test_bf16_trains_fp32_master_weights_and_resumes_from_them(tmp_path, data_file):
    """A bf16 policy samples in bf16 but the optimiser updates fp32 master weights: at lr 1e-6
    nearly every master weight moves (in pure bf16 about 2% would: the rest of the steps are
    below bf16's resolution); the trainer state keeps them, and a resumed run continues from
    them exactly."""
    extra = ("model.dtype=bfloat16", "train.lr=1e-6", "train.steps=4")
    said = []

    class Listen(TrainObserver):
        def message(self, text):
            said.append(text)

    straight = run_training(make_config(tmp_path / "a", data_file, *extra), observer=Listen())
    assert "mixed precision: bfloat16 compute, fp32 master weights" in said
    before = weights(embedded_base())
    master = torch.load(straight.final_dir / "trainer_state.pt", weights_only=False)[
        "master_weights"
    ]
    assert all(v.dtype == torch.float32 for v in master.values())
    moved = sum(int((before[k] != master[k]).sum()) for k in before)
    assert moved > 0.5 * sum(v.numel() for v in before.values())

    cfg = make_config(tmp_path / "b", data_file, *extra)
    with pytest.raises(Crash):  # dies after step 3, which is saved as it dies
        run_training(cfg, observer=CrashAt(3))
    resumed = run_training(cfg, resume=True)
    again = torch.load(resumed.final_dir / "trainer_state.pt", weights_only=False)
    assert all(torch.equal(master[k], again["master_weights"][k]) for k in master), "diverged"
    a, b = weights(straight.final_dir), weights(resumed.final_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_bf16_run_saves_the_weights_it_sampled_with(tmp_path, data_file):
    """The checkpoint's model is the bf16 policy that was sampled and rewarded, not the fp32
    master weights: those drift below bf16's resolution, unseen by any forward pass (on a
    real 135M model the masters run in fp32 scored 0% where the policy scored 46%)."""
    cfg = make_config(tmp_path, data_file, "model.dtype=bfloat16", "train.lr=1e-3")
    result = run_training(cfg)
    saved = AutoModelForCausalLM.from_pretrained(result.final_dir, dtype="auto")
    assert saved.dtype == torch.bfloat16
    master = torch.load(result.final_dir / "trainer_state.pt", weights_only=False)
    rounded = {k: v.bfloat16() for k, v in master["master_weights"].items()}
    assert all(torch.equal(v, rounded[k]) for k, v in saved.state_dict().items())
    assert any(not torch.equal(v.float(), master["master_weights"][k])
               for k, v in saved.state_dict().items())  # fmt: skip


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, data_file):
    with pytest.raises(DapoError, match="no checkpoint under"):
        run_training(make_config(tmp_path, data_file), resume=True)


def test_resume_from_a_state_missing_a_key_is_one_line(tmp_path, data_file):
    """A trainer state written without one of the keys a resume needs (e.g. by an older
    version) is refused in one line naming the key, not a KeyError."""
    run_training(make_config(tmp_path, data_file))  # 3 steps, saved at step 2
    state_file = tmp_path / "ck" / "step_000002" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=False)
    del state["generators"]
    torch.save(state, state_file)
    with pytest.raises(DapoError, match="lacks generators .*older dapo_cli"):
        run_training(make_config(tmp_path, data_file, "train.steps=4"), resume=True)


def test_dynamic_sampling_cap_says_what_to_change(tmp_path, data_file):
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    never = tmp_path / "never.jsonl"
    never.write_text("".join(json.dumps({**r, "task_type": "test-never"}) + "\n" for r in rows))
    cfg = make_config(tmp_path, never, "train.max_num_gen_batches=3", "train.on_gen_cap=error")
    expected = (r"found 0 of 2 prompts.*in 3 generation batches.*100% all-wrong"
                r".*max_num_gen_batches=0.*on_gen_cap=continue")  # fmt: skip
    with pytest.raises(DapoError, match=expected) as err:
        run_training(cfg)
    # what the responses looked like, and the fixes (one line)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(
        r"; \d+ of 16 responses of the last batch had an 'Answer:' line or a \\boxed\{\} "
        r"\(e\.g\. '",
        message,
    )
    assert "--system" in message and "dapo sft" in message and "--reward" in message
    store = Store(tmp_path / "d.db", create=False)
    assert store.runs("train")[-1]["status"] == "failed"


def test_plain_grpo_configuration_trains(tmp_path, data_file):
    result = run_training(make_config(
        tmp_path, data_file, "algorithm.loss_agg=seq-mean-token-mean", "algorithm.eps_high=0.2",
        "algorithm.dynamic_sampling=false", "algorithm.overlong_filtering=false",
        "algorithm.soft_overlong_punishment=false", "train.steps=2",
    ))  # fmt: skip
    assert result.status == "completed"
    assert all(h["groups_filtered"] == 0 and h["gen_batches"] == 1 for h in result.history)


def test_a_non_finite_loss_skips_the_update(tmp_path, data_file, monkeypatch):
    real = one_step.A.policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(one_step.A, "policy_loss", nan_loss)
    # overlong filtering off: a random model's responses are all truncated, and rows with
    # every token filtered are never run (so no loss would be computed at all)
    config = make_config(tmp_path, data_file, "train.steps=1", "algorithm.overlong_filtering=false")
    result = run_training(config)
    assert result.history[0]["nonfinite_skipped"] == 2  # both mini-batches skipped
    assert result.history[0]["updates"] == 0
    before, after = weights(embedded_base()), weights(result.final_dir)  # as saved, in its dtype
    assert all(torch.equal(before[k].to(after[k].dtype), after[k]) for k in before)


def test_cli_train_runs_and_bad_flags_fail_before_work(tmp_path, data_file):
    runner = CliRunner()
    args = ["train", "--data", str(data_file), "--steps", "2", "--output-dir",
            str(tmp_path / "ck"), "--db-path", str(tmp_path / "d.db"), "--group-size", "4",
            "--set", "warm_start.enabled=off", "--set", "rollout.max_new_tokens=8",
            "--set", "algorithm.overlong_cache_len=2", "--set", "train.train_batch_size=2",
            "--set", "train.gen_batch_size=4", "--set", "train.mini_batch_size=2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "step    2" in result.output and "dapo_final" in result.output
    (log,) = (tmp_path / "logs").glob("train-*.log")  # plain text beside the store, to grep
    text = log.read_text()
    assert "model: " in text and "step 2/2 reward_mean=" in text and "completed after 2" in text
    dtype = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    assert re.search(rf"model: \S+tiny-1m \(1\.0M parameters, {dtype}\) on cpu", result.output)
    bad = runner.invoke(app, [*args, "--set", "train.lrr=1"])
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines() == [
        "Error: config: unknown key train.lrr (known: gen_batch_size, grad_clip, lr, "
        "lr_schedule, max_num_gen_batches, max_samples, micro_batch_size, mini_batch_size, "
        "on_gen_cap, parallelism, ppo_epochs, seed, steps, train_batch_size, warmup_steps, "
        "weight_decay)"
    ]


def test_training_reads_samples_from_the_store(tmp_path, data_file):
    from dapo_cli.records import read_records

    store = Store(tmp_path / "samples.db")
    store.import_samples(read_records(data_file), source="parity.jsonl")
    cfg = make_config(tmp_path, data_file, "data.path=null",
                      f"data.db_path={tmp_path / 'samples.db'}", "train.steps=1")  # fmt: skip
    messages = []

    class Listen(TrainObserver):
        def message(self, text):
            messages.append(text)

    result = run_training(cfg, observer=Listen())
    assert result.status == "completed"
    assert any("40 samples from" in m and "samples.db" in m for m in messages)


def test_tensorboard_events_are_written_when_installed(tmp_path, data_file):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_training(make_config(tmp_path, data_file, "train.steps=2"))
    logdir = tmp_path / "ck" / "tensorboard" / result.run_id
    events = EventAccumulator(str(logdir))
    events.Reload()
    rewards = events.Scalars("dapo/reward_mean")
    assert [e.step for e in rewards] == [1, 2]
    assert rewards[0].value == pytest.approx(result.history[0]["reward_mean"])


def test_kl_to_a_reference_model_is_optional(tmp_path, data_file):
    # overlong filtering off: a random model's responses are mostly truncated, and a step
    # whose tokens are all filtered out has no KL to report
    result = run_training(
        make_config(tmp_path, data_file, "algorithm.kl_coef=0.1", "train.steps=2",
                    "algorithm.overlong_filtering=false")
    )  # fmt: skip
    kls = [h["kl_ref"] for h in result.history]
    # the first mini-batch sees policy == reference; later ones see a policy that has moved
    assert all(math.isfinite(k) for k in kls) and 0 < kls[0] < kls[1]
    assert (
        "kl_ref"
        not in run_training(make_config(tmp_path / "nokl", data_file, "train.steps=1")).history[0]
    )


def test_dapo_raises_the_reward_it_is_given(tmp_path, data_file):
    """The policy gradient points the right way: rewarded for writing a '7', a random model
    learns to write one within a few steps (measured: 1% -> 72% in 10 steps)."""
    register_verifier("test-seven", lambda s, c: Score.binary("7" in c))
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    seven = tmp_path / "seven.jsonl"
    seven.write_text("".join(json.dumps({**r, "task_type": "test-seven"}) + "\n" for r in rows))
    result = run_training(make_config(
        tmp_path, seven, "rollout.group_size=8", "train.train_batch_size=8",
        "train.gen_batch_size=16", "train.mini_batch_size=2", "train.lr=1e-3",
        "train.steps=10", "algorithm.overlong_filtering=false",
        "algorithm.soft_overlong_punishment=false", "algorithm.overlong_cache_len=0",
        "train.max_num_gen_batches=0", "output.save_every=0",
    ))  # fmt: skip
    acc = [h["accuracy"] for h in result.history]
    assert sum(acc[-2:]) / 2 > 0.2 and sum(acc[-2:]) > 4 * sum(acc[:2]), acc


def test_rows_without_gradient_are_skipped_and_the_step_is_unchanged(tmp_path, monkeypatch):
    """Rows with advantage 0 (a group all wrong, dynamic sampling off) and overlong-filtered
    rows are not run through the model, yet the step equals the full-batch loss's step."""
    import copy
    import random

    from dapo_cli import algorithm as A
    from dapo_cli.policy import load_policy
    from dapo_cli.rollout import sequence_logprobs

    path = tmp_path / "mixed.jsonl"
    rows = [
        {"task_type": "test-never" if i % 2 else "test-parity", "prompt": f"Number {i}?",
         "answer": "x", "split": "train"}
        for i in range(12)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(None, [
        f"data.path={path}", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "algorithm.overlong_cache_len=2", "algorithm.dynamic_sampling=false",
        "algorithm.overlong_filtering=false", "train.train_batch_size=8",
        "train.gen_batch_size=8", "train.mini_batch_size=8",
        "train.micro_batch_size=5", "train.grad_clip=0", "train.lr=1.0",
    ])  # fmt: skip
    policy = load_policy(str(embedded_base("tiny-1m")), dtype="float32")  # compared to 1e-5
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    batch = one_step.collect_batch(
        policy,
        one_step.PromptStream(samples, seed=0),
        config,
        torch.Generator(policy.device).manual_seed(0),
    )
    batch.loss_mask[[1, 6]] = 0  # as overlong filtering masks truncated rows
    idle = (batch.advantages == 0) | (batch.loss_mask.sum(-1) == 0)
    assert 0 < int(idle.sum()) < len(idle)  # some rows carry no gradient, some do

    # the reference: one forward/backward over every row, plain SGD with lr 1
    ref = copy.deepcopy(policy.model)
    logp = sequence_logprobs(ref, batch.rollout, config.rollout.temperature)
    loss, _ = A.policy_loss(
        logp, batch.rollout.logprobs, batch.advantages, batch.loss_mask,
        eps_low=0.2, eps_high=0.28, num_tokens=batch.loss_mask.sum(),
    )  # fmt: skip
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= p.grad

    forwarded = []  # rows handed to the model (a prompt shared by several is run once)

    def counting(model, sub, *args, **kwargs):
        forwarded.append(sub.response_ids.size(0))
        return sequence_logprobs(model, sub, *args, **kwargs)

    monkeypatch.setattr(one_step, "sequence_logprobs", counting)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=1.0)
    out = one_step.update(policy, optimizer, batch, config, random.Random(0))
    assert sum(forwarded) == int((~idle).sum())  # only the rows with a gradient were run
    assert out["rows_skipped"] == pytest.approx(float(idle.float().mean()))
    # the logged loss is the mini-batch's loss over all its tokens (skipped rows add 0),
    # not re-normalised by the tokens of the rows run
    assert out["loss"] == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-7)
    got, want = policy.model.state_dict(), ref.state_dict()
    for name, p in want.items():
        rel = float((got[name] - p).norm() / p.norm().clamp(min=1e-12))
        assert rel <= 1e-5, (name, rel)


def test_groups_filtered_counts_groups_without_signal_not_the_surplus(tmp_path):
    """Half the prompts can never be wrong or never right (no signal); the other half always
    have signal. Over-sampling 3x leaves informative groups unused: they are not 'filtered'."""
    from dapo_cli.policy import load_policy

    kinds = ["test-never", "test-parity", "test-always", "test-parity"]
    samples = [
        {"task_type": kinds[i % 4], "prompt": f"Number {i}?", "answer": "x", "split": "train"}
        for i in range(48)
    ]  # fmt: skip
    config = load_config(None, [
        "rollout.group_size=8", "rollout.max_new_tokens=6", "algorithm.overlong_cache_len=2",
        "train.train_batch_size=4", "train.gen_batch_size=12", "train.mini_batch_size=4",
    ])  # fmt: skip
    policy = load_policy(str(embedded_base("tiny-1m")))
    batch = one_step.collect_batch(
        policy,
        one_step.PromptStream(samples, seed=0),
        config,
        torch.Generator(policy.device).manual_seed(0),
    )
    stats = batch.stats
    assert stats["prompts_trained"] == 4 and stats["gen_batches"] == 1
    drawn = one_step.PromptStream(samples, seed=0).take(12)  # the same 12 prompts
    constant = sum(s["task_type"] != "test-parity" for s in drawn)
    assert 0 < constant < 12
    # every all-wrong / all-right group counts; a parity group only if its 8 lengths agree
    filtered = round(stats["groups_filtered"] * 12)
    assert filtered == pytest.approx(stats["groups_filtered"] * 12)
    assert constant <= filtered <= constant + 1
    assert filtered < 12 - 4  # the unused groups with signal are not counted as filtered


def test_the_update_shares_prompt_passes_except_under_checkpointing(tmp_path, data_file,
                                                                    monkeypatch):  # fmt: skip
    """A prompt's rows share one prompt pass in the update, but not under gradient
    checkpointing: there transformers drops the cache inside checkpointed layers, and the
    shared pass would give wrong log-probs (0.7 off on the tiny model)."""
    import random

    from dapo_cli.models import enable_gradient_checkpointing
    from dapo_cli.policy import load_policy
    from dapo_cli.rollout import sequence_logprobs

    config = make_config(tmp_path, data_file, "algorithm.dynamic_sampling=false",
                         "algorithm.overlong_filtering=false")  # fmt: skip
    policy = load_policy(str(embedded_base("tiny-1m")))
    samples = [json.loads(line) for line in data_file.read_text().splitlines()]
    batch = one_step.collect_batch(policy, one_step.PromptStream(samples, seed=0), config,
                                  torch.Generator(policy.device).manual_seed(0))  # fmt: skip
    seen = []

    def recording(model, sub, *args, groups=None, **kwargs):
        seen.append(groups)
        return sequence_logprobs(model, sub, *args, groups=groups, **kwargs)

    monkeypatch.setattr(one_step, "sequence_logprobs", recording)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.0)
    one_step.update(policy, optimizer, batch, config, random.Random(0))
    assert seen and all(g is not None for g in seen)
    seen.clear()
    enable_gradient_checkpointing(policy.model)
    one_step.update(policy, optimizer, batch, config, random.Random(0))
    assert seen and all(g is None for g in seen)


def test_code_tasks_without_a_sandbox_stop_before_any_work(tmp_path, monkeypatch):
    """No namespace sandbox and no opt-in: one line, exit 1, nothing trained or recorded."""
    import random

    from dapo_cli import sandbox
    from dapo_cli.tasks import get_task

    rng = random.Random(0)
    rows = [{**get_task("code").generate(rng, "easy"), "task_type": "code", "split": "train"}
            for _ in range(4)]  # fmt: skip
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sandbox, "_bwrap_binary", lambda: None)
    monkeypatch.delenv(sandbox.SANDBOX_ENV, raising=False)
    sandbox._detect_mode.cache_clear()
    try:
        result = CliRunner().invoke(app, [
            "train", "--data", str(data), "--steps", "1", "--output-dir", str(tmp_path / "ck"),
            "--db-path", str(tmp_path / "d.db"), "--set", "warm_start.enabled=off",
        ])  # fmt: skip
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "no namespace sandbox" in lines[0]
        assert "reward.sandbox=rlimits-only" in lines[0]
        assert not (tmp_path / "ck").exists() and not (tmp_path / "d.db").exists()
    finally:
        sandbox.allow_rlimits_only(False)
        sandbox._detect_mode.cache_clear()


def test_bf16_first_update_has_ratio_exactly_one(tmp_path, data_file):
    """bf16 sampling, fp32 master weights under autocast: the old log-probs are the update's
    own numbers, so before the policy moves the ratio is exactly 1 (the sampler's bf16
    log-probs differ from the update's by up to ~0.2 in log space)."""
    one = run_training(make_config(
        tmp_path / "one", data_file, "model.dtype=bfloat16", "train.steps=1",
        "train.mini_batch_size=2", "algorithm.overlong_filtering=false",
    )).history[0]  # fmt: skip
    assert one["updates"] == 1
    assert one["ratio_mean"] == 1.0 and one["approx_kl"] == 0.0
    assert one["clip_frac_low"] == 0.0 and one["clip_frac_high"] == 0.0
    assert one["rollout_logprob_diff_max"] > 0  # the sampler's own numbers were not used
    # several optimiser steps per batch: recomputed by the trained module before the first
    # step; lr so small that no weight moves, so every mini-batch sees the starting policy
    two = run_training(make_config(
        tmp_path / "two", data_file, "model.dtype=bfloat16", "train.steps=1",
        "train.mini_batch_size=1", "algorithm.overlong_filtering=false", "train.lr=1e-30",
    )).history[0]  # fmt: skip
    assert two["updates"] == 2
    assert abs(two["ratio_mean"] - 1.0) < 1e-3 and two["approx_kl"] < 1e-6
    assert two["rollout_logprob_diff_max"] > 0


def test_resume_keeps_the_kl_reference_of_the_run(tmp_path, data_file):
    """The KL penalty's reference is the run's starting policy, also after --resume (it
    was the resumed checkpoint: another objective, and another final model)."""
    extra = ("algorithm.kl_coef=0.5", "train.steps=4", "algorithm.overlong_filtering=false")
    straight = run_training(make_config(tmp_path / "a", data_file, *extra))
    cfg = make_config(tmp_path / "b", data_file, *extra)
    with pytest.raises(Crash):  # dies after step 3, which is saved as it dies
        run_training(cfg, observer=CrashAt(3))
    resumed = run_training(cfg, resume=True)
    a, b = weights(straight.final_dir), weights(resumed.final_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run optimised another objective"
    assert [h["kl_ref"] for h in resumed.history] == [h["kl_ref"] for h in straight.history[3:]]


def test_a_named_model_warm_start_is_the_kl_reference(tmp_path, data_file):
    """With a warm start in the run, the reference is the warm-started policy (the first
    step's KL is 0 up to rounding), saved beside the checkpoints for a resume."""
    cfg = make_config(
        tmp_path, data_file, f"model.name={embedded_base()}", "warm_start.enabled=on",
        "warm_start.steps=3", "algorithm.kl_coef=0.5", "train.steps=1",
        "algorithm.overlong_filtering=false", "train.mini_batch_size=2",
    )  # fmt: skip
    result = run_training(cfg)
    assert result.history[0]["kl_ref"] < 1e-6
    assert (tmp_path / "ck" / "kl_reference" / "config.json").is_file()
    from dapo_cli.scale.checkpoint import load_trainer_state

    state = load_trainer_state(result.final_dir)
    assert state["kl_reference"] == str((tmp_path / "ck" / "kl_reference").resolve())


def test_entropy_counts_every_generated_token_truncated_included(tmp_path, data_file):
    """Overlong filtering masks truncated responses out of the loss, not out of the entropy
    the paper watches: the mean over every response token of the sampling distribution."""
    from dapo_cli.policy import load_policy
    from dapo_cli.rollout import sequence_logprobs

    config = make_config(tmp_path, data_file, "algorithm.dynamic_sampling=false")
    policy = load_policy(str(embedded_base("tiny-1m")))
    samples = [json.loads(line) for line in data_file.read_text().splitlines()]
    batch = one_step.collect_batch(
        policy, one_step.PromptStream(samples, 0), config, torch.Generator().manual_seed(0)
    )
    assert bool(batch.rollout.truncated.any())  # a random model: truncated responses exist
    _, entropy = sequence_logprobs(policy.model, batch.rollout, 1.0, return_entropy=True)
    mask = batch.rollout.response_mask.float()
    want = float((entropy * mask).sum() / mask.sum())
    assert batch.stats["entropy"] == pytest.approx(want, rel=1e-4)
    # the old metric (over the loss mask) leaves the truncated responses out
    assert float(batch.loss_mask.sum()) < float(mask.sum())


def test_step_line_shows_a_dash_where_no_token_was_measured_not_nan():
    from dapo_cli.cli.train import format_step

    line = format_step({"reward_mean": -1.0, "clip_frac_high": math.nan, "approx_kl": math.nan})
    assert line == "reward -1.00  clip —  kl —"
