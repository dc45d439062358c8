"""Training-step benchmark: dapo_cli's DAPO trainer against TRL's ``GRPOTrainer`` set up for DAPO.

Both train the same warm-started embedded model (``tiny-1m``, ``tiny-10m``) on the same
generated medium-difficulty math prompts, in the same order, with the same reward
(``dapo_cli.rewards.score``), group size G, ``max_new_tokens``, learning rate, clip range
(0.2 / 0.28), token-mean loss, overlong filtering, μ = 1 and one optimiser update per step,
fp32 on the CPU. Each run is a fresh subprocess (``--worker ours|trl``) that loads a fresh
copy of the warm-started weights, so the peak RSS is per trainer; the runs alternate
(ours, TRL, ours, TRL, ...) with the same seed for the pair. Reported per model: median
seconds per step (the first step of each run is a warm-up and not counted), completion
tokens per second, peak RSS, the TRL/ours time ratio, the mean training reward of the
last steps, a time breakdown (sampling / rest of the rollout / update), the FLOP rate of
our rollout and update against the fp32 matmul peak, and one run of ours with dynamic
sampling on.

Run from the repository root (needs ``pip install -e .[bench]`` for TRL)::

    python -m benchmarks.bench_trl --ds-steps 3  # adds the dynamic-sampling run
    python -m benchmarks.bench_trl --quick       # smoke run (75 s here, warm start cached)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import matmul_peak, model_shape, print_peak, rollout_flops, rss_mib  # noqa: E402
from dapo_cli.datagen import generate_dataset  # noqa: E402

# --- settings ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["tiny-1m", "tiny-10m"],
        help="embedded models (warm-started first), or model folders / .gguf files (as they are)",
    )
    p.add_argument(
        "--ours-dtypes",
        nargs="+",
        choices=["float32", "bfloat16", "auto"],
        default=["float32"],
        help="our trainer's compute dtypes, one run each: float32, bfloat16, auto (bf16 "
        "compute keeps fp32 master weights)",
    )
    p.add_argument(
        "--trl-dtypes",
        nargs="+",
        choices=["float32", "bfloat16"],
        default=["float32"],
        help="TRL's: float32, or bfloat16 (its bf16=True: autocast over fp32 weights)",
    )
    p.add_argument("--system", default=None, help="system prompt before every prompt (both)")
    p.add_argument("--steps", type=int, default=10, help="optimiser steps per run")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--group", "-G", type=int, default=8, help="samples per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--micro-batch",
        type=int,
        default=32,
        help="responses per forward/backward: ours train.micro_batch_size, TRL "
        "per_device_train_batch_size (gradient accumulation makes up the rest of the step)",
    )
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (both)")
    p.add_argument(
        "--reward",
        choices=["task", "coin"],
        default="task",
        help="task: the math verifier; coin: even response length wins (mixed groups "
        "whatever the accuracy, so every row is trained)",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per trainer and model")
    p.add_argument("--seed", type=int, default=0, help="seed of repeat 0 (repeat r: seed + r)")
    p.add_argument("--warm-steps", type=int, default=200, help="supervised warm-start steps")
    p.add_argument("--warm-batch", type=int, default=32)
    p.add_argument("--warm-lr", type=float, default=3e-3)
    p.add_argument("--num-samples", type=int, default=4000, help="generated math samples")
    p.add_argument(
        "--reward-window", type=int, default=5, help="mean reward over this many last steps"
    )
    p.add_argument(
        "--ds-gen-factor",
        type=int,
        default=2,
        help="dynamic-sampling run: gen_batch_size = this × prompts (0 = skip that run)",
    )
    p.add_argument("--ds-steps", type=int, default=5, help="steps of the dynamic-sampling run")
    p.add_argument("--matmul-sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--matmul-repeats", type=int, default=7)
    p.add_argument(
        "--models-dir",
        default=None,
        help="where the embedded and warm-started models are built/reused (default: "
        "$DAPO_HOME, else a folder in the system temp dir)",
    )
    p.add_argument("--output", default=None, help="also write every number as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny-1m, 2 steps, 1 repeat")
    # internal: one trainer run in this process (the parent starts these)
    p.add_argument("--worker", choices=["ours", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.repeats, args.ds_steps = ["tiny-1m"], 2, 1, 1
        args.matmul_sizes, args.matmul_repeats = [512], 3
    if (args.prompts * args.group) % args.micro_batch:
        p.error("--micro-batch must divide prompts × G")
    return args


def train_samples(num_samples: int, reward: str = "task") -> list[dict[str, Any]]:
    """The generated medium math samples (all in the train split); the same in every process.
    ``reward="coin"`` relabels them for a reward any model wins half the time (an even number
    of characters in the response), so every group is mixed and both trainers update on
    every row, whatever the model's accuracy."""
    samples = generate_dataset(
        num_samples, ["math"], seed=0, difficulty="medium", test_fraction=0.0
    )
    if reward == "coin":
        from dapo_cli.rewards import register_verifier
        from dapo_cli.tasks.base import Score

        register_verifier("bench-coin", lambda sample, text: Score.binary(len(text) % 2 == 0))
        samples = [{**s, "task_type": "bench-coin"} for s in samples]
    return samples


# --- the warm start (once per model and settings, cached) --------------------------------


def warm_model(size: str, args, models_dir: Path) -> tuple[Path, dict[str, Any]]:
    """``embedded_base(size)`` after ``supervised_warm_start``, saved under ``models_dir`` and
    reused by later runs with the same settings."""
    key = json.dumps(
        {"size": size, "steps": args.warm_steps, "batch": args.warm_batch, "lr": args.warm_lr,
         "samples": args.num_samples, "seed": 0},
        sort_keys=True,
    )  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    if Path(size).exists():  # a model folder or .gguf file, trained as it is
        return Path(size), {"as_given": True}
    target = models_dir / "bench-trl-warm" / f"{size}-warm{args.warm_steps}-{digest}"
    info_file = target / "bench_warm_start.json"
    if info_file.is_file():
        return target, {**json.loads(info_file.read_text()), "reused": True}
    from dapo_cli.models import embedded_base
    from dapo_cli.policy import load_policy
    from dapo_cli.scale import checkpoint as ckpt
    from dapo_cli.sft import supervised_warm_start

    base = embedded_base(size, cache_dir=models_dir)
    policy = load_policy(str(base), device="cpu", dtype="float32")
    torch.manual_seed(0)
    print(f"warm start: {size}, {args.warm_steps} supervised steps (cached afterwards) ...")
    summary = supervised_warm_start(
        policy, train_samples(args.num_samples), steps=args.warm_steps,
        batch_size=args.warm_batch, lr=args.warm_lr, seed=0,
    )  # fmt: skip
    ckpt.save_checkpoint(target, policy.model, policy.tokenizer)
    info = {"key": json.loads(key), **summary}
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return target, {**info, "reused": False}


# --- shared worker helpers ---------------------------------------------------------------


def step_prompts(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompts of the run in order: what our PromptStream hands out, P per step."""
    from dapo_cli.step import PromptStream

    stream = PromptStream(train_samples(job["num_samples"], job.get("reward", "task")), job["seed"])
    return stream.take(job["steps"] * job["prompts"])


def prompt_lengths(policy, samples: list[dict[str, Any]], per_step: int) -> list[float]:
    """Mean real prompt tokens (chat template applied) of each step's prompts."""
    lengths = [policy.prompt_length(s["prompt"]) for s in samples]
    return [
        sum(lengths[i : i + per_step]) / per_step for i in range(0, len(lengths), per_step)
    ]  # fmt: skip


def timed(fn, sink: list[float]):
    """``fn`` wrapped to append its wall time to ``sink`` (one entry per call)."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            sink.append(time.perf_counter() - t0)

    return wrapper


# --- worker: ours ------------------------------------------------------------------------


def run_ours(job: dict[str, Any]) -> dict[str, Any]:
    """``job['steps']`` calls of ``dapo_cli.step.dapo_step``, set up as ``run_training``
    does (AdamW, LambdaLR, PromptStream, seeded generator and mini-batch RNG) minus the
    store and checkpoints; each call timed."""
    t_setup = time.perf_counter()
    import dapo_cli.step as T
    from dapo_cli import rollout
    from dapo_cli.config import load_config
    from dapo_cli.policy import load_policy
    from dapo_cli.scale.distributed import SINGLE
    from dapo_cli.scale.trained_model import prepare_trained

    dynamic = job["dynamic_sampling"]
    P, G = job["prompts"], job["group"]
    overrides = [
        "model.device=cpu",
        f"model.dtype={job.get('dtype', 'float32')}",
        f"rollout.group_size={G}",
        f"rollout.max_new_tokens={job['max_new_tokens']}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        "rollout.top_k=0",
        f"algorithm.dynamic_sampling={str(dynamic).lower()}",
        "algorithm.overlong_filtering=true",
        "algorithm.soft_overlong_punishment=false",
        "algorithm.overlong_cache_len=0",  # unused with the punishment off
        "algorithm.eps_low=0.2",
        "algorithm.eps_high=0.28",
        "algorithm.loss_agg=token-mean",
        "algorithm.kl_coef=0",
        f"train.steps={job['steps']}",
        f"train.train_batch_size={P}",
        f"train.mini_batch_size={P}",
        f"train.micro_batch_size={job['micro_batch']}",
        f"train.gen_batch_size={P * max(job['ds_gen_factor'], 1)}",
        "train.max_num_gen_batches=10",
        "train.on_gen_cap=continue",
        "train.ppo_epochs=1",
        f"train.lr={job['lr']}",
        "train.lr_schedule=constant",
        "train.warmup_steps=0",
        "train.weight_decay=0.1",
        "train.grad_clip=1.0",
        f"train.seed={job['seed']}",
    ]
    config = load_config(None, overrides)
    t = config.train
    policy = load_policy(job["warm_dir"], device="cpu", dtype=config.model.dtype)
    policy.system = job.get("system")
    trained = prepare_trained(policy.model, SINGLE)  # fp32 master weights of a bf16 policy
    samples = train_samples(job["num_samples"], job.get("reward", "task"))
    torch.manual_seed(t.seed)
    optimizer = torch.optim.AdamW(
        [p for p in trained.parameters() if p.requires_grad],
        lr=t.lr,
        weight_decay=t.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, T.lr_lambda(config))
    stream = T.PromptStream(samples, t.seed)
    generator = torch.Generator(device=policy.device).manual_seed(t.seed)
    rng = random.Random(f"dapo-minibatch:{t.seed}")
    sample_times: list[float] = []
    # to split the rollout into sampling and the rest
    rollout.sample = timed(rollout.sample, sample_times)
    lengths = None if dynamic else prompt_lengths(policy, step_prompts(job), P)
    setup_s = time.perf_counter() - t_setup

    steps = []
    for k in range(t.steps):
        n_before = len(sample_times)
        t0 = time.perf_counter()
        state = T.StepState(policy, optimizer, scheduler, stream, generator, rng, model=trained)
        m = T.dapo_step(state, config)
        seconds = time.perf_counter() - t0
        steps.append(
            {
                "seconds": seconds,
                "tokens": m["tokens_generated"],
                "reward_mean": m["reward_mean"],
                "accuracy": m["accuracy"],
                "truncation_rate": m["truncation_rate"],
                "response_length_mean": m["response_length_mean"],
                "gen_batches": m["gen_batches"],
                "prompts_trained": m["prompts_trained"],
                "groups_filtered": m["groups_filtered"],
                "rollout_s": m["gen_time"],  # collect_batch: encode, sample, decode, score
                "sample_s": sum(sample_times[n_before:]),
                "update_s": m["step_time"] - m["gen_time"],
                "step_time_metric": m["step_time"],
                "loss": m["loss"],
                "rows_skipped": m.get("rows_skipped", 0.0),  # not run: no gradient
                "prompt_len_mean": lengths[k] if lengths else None,
            }
        )
    dtype = str(policy.model.dtype).removeprefix("torch.")
    return {"setup_s": setup_s, "steps": steps, "shape": model_shape(policy.model), "dtype": dtype}


# --- worker: TRL -------------------------------------------------------------------------


def run_trl(job: dict[str, Any]) -> dict[str, Any]:
    """``GRPOTrainer.train()`` for ``job['steps']`` optimiser steps, configured for DAPO;
    each optimiser step timed by a callback."""
    t_setup = time.perf_counter()
    import datasets
    import trl
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from dapo_cli.policy import load_policy
    from dapo_cli.rewards import score

    P, G = job["prompts"], job["group"]
    rows = P * G
    micro = job["micro_batch"]
    policy = load_policy(job["warm_dir"], device="cpu", dtype="float32")  # bf16: autocast
    policy.system = job.get("system")
    system = [{"role": "system", "content": policy.system}] if policy.system else []
    model, tokenizer = policy.model, policy.tokenizer
    # TRL stops at model.generation_config.eos_token_id (plus the tokenizer's EOS): make it
    # exactly our stop ids (the embedded model already declares them; this only asserts it)
    model.generation_config.eos_token_id = policy.stop_ids
    prompts = step_prompts(job)
    lengths = prompt_lengths(policy, prompts, P)
    dataset = datasets.Dataset.from_list(
        [
            {
                "prompt": [*system, {"role": "user", "content": s["prompt"]}],
                "sample_json": json.dumps(s),
            }  # fmt: skip
            for s in prompts
        ]
    )
    # The prompt TRL renders must be token for token the one we sample from.
    trl_ids = tokenizer.apply_chat_template(
        [*system, {"role": "user", "content": prompts[0]["prompt"]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    ours_ids, ours_mask = policy.encode([prompts[0]["prompt"]])
    prompt_ids_match = list(trl_ids) == ours_ids[0][ours_mask[0].bool()].tolist()

    calls: list[dict[str, float]] = []

    def dapo_reward(prompts, completions, completion_ids, sample_json, **kwargs):
        """dapo_cli's verifier reward for each completion (the same call our trainer makes)."""
        scores = []
        for c, sj in zip(completions, sample_json, strict=True):
            text = c[0]["content"] if isinstance(c, list) else c
            scores.append(score(json.loads(sj), text))
        stop = set(policy.stop_ids)
        n = len(scores)
        calls.append(
            {
                "reward_mean": sum(s.reward for s in scores) / n,
                "accuracy": sum(bool(s.correct) for s in scores) / n,
                "tokens": float(sum(len(ids) for ids in completion_ids)),
                "truncation_rate": sum(
                    1 for ids in completion_ids if not ids or ids[-1] not in stop
                ) / n,
            }
        )  # fmt: skip
        return [float(s.reward) for s in scores]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.train_begin, self.begin, self.end, self.logs = None, [], [], []

        def on_train_begin(self, args, state, control, **kw):
            self.train_begin = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.end.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    gen_score_times: list[float] = []
    generate_times: list[float] = []

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with a stopwatch on its rollout (generate + decode + reward +
        advantages), nothing else changed."""

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                gen_score_times.append(time.perf_counter() - t0)

    model.generate = timed(model.generate, generate_times)
    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    config = GRPOConfig(
        output_dir=out_dir,
        # DAPO: token-mean loss over the whole step, Clip-Higher, overlong filtering, no KL
        loss_type="dapo",
        epsilon=0.2,
        epsilon_high=0.28,
        mask_truncated_completions=True,
        beta=0.0,
        scale_rewards="group",
        # batch: one generation of P prompts × G per optimiser step, micro-batches of `micro`
        num_generations=G,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=rows // micro,  # steps_per_generation defaults to this
        num_iterations=1,
        max_steps=job["steps"],
        max_completion_length=job["max_new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        shuffle_dataset=False,  # the dataset is already in our stream's order
        # optimiser as ours: AdamW (torch, not fused), wd 0.1, constant lr, clip 1.0
        learning_rate=job["lr"],
        optim="adamw_torch",
        weight_decay=0.1,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        # on the CPU in fp32 or bf16 (autocast), no gradient checkpointing (TRL turns it on by
        # default), no dropout
        use_cpu=True,
        bf16=job.get("dtype") == "bfloat16",
        fp16=False,
        gradient_checkpointing=False,
        disable_dropout=True,
        # no I/O beyond the log call
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=job["seed"],
        data_seed=job["seed"],
    )
    timer = StepTimer()
    trainer = TimedGRPOTrainer(
        model=model,
        reward_funcs=dapo_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    resolved = {
        k: getattr(trainer.args, k)
        for k in ("generation_batch_size", "steps_per_generation", "gradient_accumulation_steps",
                  "per_device_train_batch_size", "optim", "lr_scheduler_type", "bf16",
                  "gradient_checkpointing", "loss_type", "epsilon", "epsilon_high",
                  "mask_truncated_completions", "beta", "num_iterations", "scale_rewards")
    }  # fmt: skip
    resolved = {k: v if isinstance(v, int | float | bool) else str(v) for k, v in resolved.items()}
    resolved["eos_token_ids"] = list(trainer.eos_token_ids)
    setup_s = time.perf_counter() - t_setup
    trainer.train()

    n = len(timer.end)
    marks = [timer.train_begin, *timer.end]
    step_logs = [lg for lg in timer.logs if "train_runtime" not in lg]
    steps = []
    for k in range(n):
        c = calls[k] if k < len(calls) else {}
        gen_s = gen_score_times[k] if k < len(gen_score_times) else float("nan")
        seconds = marks[k + 1] - marks[k]
        steps.append(
            {
                "seconds": seconds,  # since the previous step ended (data, logging included)
                "callback_seconds": timer.end[k] - timer.begin[k],
                "tokens": c.get("tokens"),
                "reward_mean": c.get("reward_mean"),
                "accuracy": c.get("accuracy"),
                "truncation_rate": c.get("truncation_rate"),
                "rollout_s": gen_s,  # _generate_and_score_completions
                "sample_s": generate_times[k] if k < len(generate_times) else float("nan"),
                "update_s": seconds - gen_s,
                "prompt_len_mean": lengths[k],
                "log": step_logs[k] if k < len(step_logs) else {},
            }
        )
    return {
        "setup_s": setup_s,
        "steps": steps,
        "shape": model_shape(model),
        "trl_version": trl.__version__,
        "dtype": job.get("dtype", "float32"),
        "resolved_config": resolved,
        "prompt_ids_match": prompt_ids_match,
        "reward_calls": len(calls),
    }


def worker_main(args) -> int:
    job = json.loads(Path(args.job).read_text())
    start = time.perf_counter()
    out = run_ours(job) if args.worker == "ours" else run_trl(job)
    out.update(
        trainer=args.worker,
        job=job,
        wall_s=time.perf_counter() - start,
        peak_rss_mib=rss_mib(),
        torch_threads=torch.get_num_threads(),
    )
    Path(args.result).write_text(json.dumps(out, indent=1, default=float) + "\n")
    return 0


# --- parent: run the workers, summarise --------------------------------------------------


def run_worker(kind: str, job: dict[str, Any], tmp: Path, tag: str) -> dict[str, Any]:
    job_file, result_file, log_file = (tmp / f"{tag}.{e}" for e in ("job.json", "out.json", "log"))
    job_file.write_text(json.dumps(job))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "benchmarks.bench_trl", "--worker", kind]
    cmd += ["--job", str(job_file), "--result", str(result_file)]
    t0 = time.perf_counter()
    with log_file.open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = log_file.read_text()[-4000:]
        raise SystemExit(f"worker {kind} ({tag}) failed with exit code {proc.returncode}:\n{tail}")
    result = json.loads(result_file.read_text())
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def summarise(runs: list[dict[str, Any]], window: int) -> dict[str, Any]:
    """Medians over the timed steps (all but the first of each run) of all runs."""
    timed_steps = [s for r in runs for s in r["steps"][1:]]
    first = [r["steps"][0]["seconds"] for r in runs]
    if not timed_steps:  # one step per run: nothing but the warm-up
        timed_steps = [s for r in runs for s in r["steps"]]
    secs = [s["seconds"] for s in timed_steps]
    tps_per_run = []
    for r in runs:
        st = r["steps"][1:] or r["steps"]
        tps_per_run.append(sum(s["tokens"] for s in st) / sum(s["seconds"] for s in st))
    last = [s for r in runs for s in r["steps"][-window:]]

    def med(key):
        vals = [s[key] for s in timed_steps if s.get(key) is not None]
        return statistics.median(vals) if vals else None

    return {
        "runs": len(runs),
        "steps_timed": len(timed_steps),
        "s_per_step_median": statistics.median(secs),
        "s_per_step_mean": statistics.fmean(secs),
        "s_per_step_min": min(secs),
        "s_per_step_max": max(secs),
        "first_step_s": first,
        "tokens_per_step_median": med("tokens"),
        "tokens_per_s_median": statistics.median(tps_per_run),
        "tokens_per_s_per_run": tps_per_run,
        "rollout_s_median": med("rollout_s"),
        "sample_s_median": med("sample_s"),
        "update_s_median": med("update_s"),
        "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
        "peak_rss_mib_per_run": [r["peak_rss_mib"] for r in runs],
        "setup_s_median": statistics.median(r["setup_s"] for r in runs),
        "reward_first_step_mean": statistics.fmean(r["steps"][0]["reward_mean"] for r in runs),
        "reward_last_mean": statistics.fmean(s["reward_mean"] for s in last),
        "accuracy_last_mean": statistics.fmean(s["accuracy"] for s in last),
        "truncation_last_mean": statistics.fmean(s["truncation_rate"] for s in last),
        "reward_window": min(window, min(len(r["steps"]) for r in runs)),
    }


def flop_rates(runs: list[dict[str, Any]], rows: int, peak: float) -> dict[str, Any]:
    """Rollout and update GFLOP/s per timed step (median), and of the matmul peak.

    Rollout: ``bench_rollout.rollout_flops`` (2 × params per prompt and generated token,
    plus attention) over its time (sampling alone, and the whole rollout with scoring).
    Update: 3 × the same forward count (forward + backward ≈ 6 × params per token) over
    the real prompt + response tokens of the rows the update runs (TRL: every row; ours:
    all but those with advantage 0 or every token filtered, which it skips), over step
    time − rollout time."""
    shape = runs[0]["shape"]
    per_step = []
    for r in runs:
        for s in r["steps"][1:] or r["steps"]:
            if s.get("prompt_len_mean") is None:
                continue
            fwd = rollout_flops(shape, rows, s["prompt_len_mean"], s["tokens"])
            upd = 3 * fwd * (1.0 - s.get("rows_skipped", 0.0))
            per_step.append(
                {
                    "rollout_gflop": fwd / 1e9,
                    "update_gflop": upd / 1e9,
                    "update_rows_run": 1.0 - s.get("rows_skipped", 0.0),
                    "sample_gflops": fwd / s["sample_s"] / 1e9,
                    "rollout_gflops": fwd / s["rollout_s"] / 1e9,
                    "update_gflops": upd / s["update_s"] / 1e9,
                    "step_gflops": (fwd + upd) / s["seconds"] / 1e9,
                }
            )
    if not per_step:
        return {}
    out = {k: statistics.median(p[k] for p in per_step) for k in per_step[0]}
    for k in ("sample", "rollout", "update", "step"):
        out[f"{k}_of_peak"] = out[f"{k}_gflops"] / peak
    return out


def trainers(args) -> list[tuple[str, str, str]]:
    """(name, worker, dtype) of each trainer setting, ours first, each once: e.g.
    ("ours bf16", "ours", "bfloat16"); ``auto`` as dapo_cli resolves it on this CPU."""
    from dapo_cli.models import resolve_dtype

    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    out = []
    for kind, dtypes in (("ours", args.ours_dtypes), ("trl", args.trl_dtypes)):
        for dt in dtypes:
            resolved = str(resolve_dtype(dt, torch.device("cpu"))).removeprefix("torch.")
            label = "ours" if kind == "ours" else "TRL"
            out.append((f"{label} {short.get(resolved, resolved)}", kind, resolved))
    return list(dict.fromkeys(out))  # "auto" may resolve to a dtype also asked for


def bench_size(size: str, args, models_dir: Path, tmp: Path, peaks: dict) -> dict[str, Any]:
    """Every trainer setting on one model, alternating, ``args.repeats`` times; summaries,
    FLOP rates against the matmul peak of each one's compute dtype, and TRL's best time over
    ours's best."""
    warm_dir, warm_info = warm_model(size, args, models_dir)
    label = Path(size).name if Path(size).exists() else size
    base_job = {
        "size": size,
        "warm_dir": str(warm_dir),
        "num_samples": args.num_samples,
        "steps": args.steps,
        "prompts": args.prompts,
        "group": args.group,
        "max_new_tokens": args.max_new_tokens,
        "micro_batch": args.micro_batch,
        "lr": args.lr,
        "ds_gen_factor": args.ds_gen_factor,
        "dynamic_sampling": False,
        "reward": args.reward,
        "system": args.system,
    }
    settings = trainers(args)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in settings}
    for rep in range(args.repeats):
        for name, kind, dtype in settings:
            job = {**base_job, "seed": args.seed + rep, "dtype": dtype}
            print(f"{label}: repeat {rep + 1}/{args.repeats}, {name} ...", flush=True)
            r = run_worker(kind, job, tmp, f"{label}-{name.replace(' ', '-')}-{rep}")
            runs[name].append(r)
            st = r["steps"]
            print(
                f"  {len(st)} steps, s/step "
                + " ".join(f"{s['seconds']:.2f}" for s in st)
                + f"; peak RSS {r['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    rows = args.prompts * args.group
    summaries = {}
    for name, _, dtype in settings:
        summaries[name] = summarise(runs[name], args.reward_window)
        summaries[name]["dtype"] = dtype
        summaries[name]["flops"] = flop_rates(runs[name], rows, peaks[dtype])
    fastest = {
        kind: min((n for n, k, _ in settings if k == kind),
                  key=lambda n: summaries[n]["s_per_step_median"])
        for kind in ("ours", "trl")
    }  # fmt: skip
    trl_runs = [r for n, k, _ in settings if k == "trl" for r in runs[n]]
    result = {
        "model": label,
        "warm_start": {"dir": str(warm_dir), **warm_info},
        "rows_per_step": rows,
        "params": runs[fastest["ours"]][0]["shape"]["params"],
        "non_embedding_params": runs[fastest["ours"]][0]["shape"]["non_embedding_params"],
        "trainers": summaries,
        "fastest": fastest,
        "ours": summaries[fastest["ours"]],
        "trl": summaries[fastest["trl"]],
        "trl_prompt_ids_match": all(r["prompt_ids_match"] for r in trl_runs),
        "trl_resolved_config": trl_runs[0]["resolved_config"],
        "trl_version": trl_runs[0]["trl_version"],
        "raw": runs,
    }
    o, t = result["ours"], result["trl"]
    result["ratio_trl_over_ours_s_per_step"] = t["s_per_step_median"] / o["s_per_step_median"]
    result["ratio_ours_over_trl_tokens_per_s"] = o["tokens_per_s_median"] / t["tokens_per_s_median"]
    if args.ds_gen_factor > 0:
        dtype = dict((n, d) for n, _, d in settings)[fastest["ours"]]
        job = {**base_job, "seed": args.seed, "dynamic_sampling": True, "steps": args.ds_steps,
               "dtype": dtype}  # fmt: skip
        print(f"{label}: ours with dynamic sampling (gen batch {args.ds_gen_factor}× prompts) ...")
        r = run_worker("ours", job, tmp, f"{label}-ours-ds")
        ds = summarise([r], args.reward_window)
        ds["gen_batches_per_step"] = [s["gen_batches"] for s in r["steps"]]
        ds["prompts_trained_per_step"] = [s["prompts_trained"] for s in r["steps"]]
        ds["groups_filtered_per_step"] = [s["groups_filtered"] for s in r["steps"]]
        ds["gen_batch_size"] = args.ds_gen_factor * args.prompts
        result["ours_dynamic_sampling"] = ds
        result["raw"]["ours_dynamic_sampling"] = [r]
    return result


# --- output ------------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    print_peak(console, result)
    s = result["settings"]
    console.print(
        f"{s['steps']} steps × {s['prompts']} prompts × G={s['group']} "
        f"= {s['prompts'] * s['group']} rows/step, max_new_tokens={s['max_new_tokens']}, "
        f"micro-batch {s['micro_batch']}, lr {s['lr']}, reward {s.get('reward', 'task')}, "
        f"{s['repeats']} repeat(s); embedded models warm-started {s['warm_steps']} steps; "
        f"system prompt: {s.get('system')!r}; first step of each run not timed"
    )
    table = Table(title="DAPO training step: dapo_cli (ours) vs TRL GRPOTrainer (loss_type=dapo)")
    cols = ["model", "trainer", "s/step", "min-max", "1st step", "tok/step", "tok/s",
            "rollout s", "of which sample", "update s", "peak RSS MiB", "reward 1st",
            "reward last", "acc last", "trunc last"]  # fmt: skip
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "trainer") else "right")
    for r in result["models"]:
        entries = list(r["trainers"].items())
        if "ours_dynamic_sampling" in r:
            entries.append(("ours + dyn. sampling", r["ours_dynamic_sampling"]))
        for name, m in entries:
            table.add_row(
                r["model"],
                name,
                f"{m['s_per_step_median']:.2f}",
                f"{m['s_per_step_min']:.2f}-{m['s_per_step_max']:.2f}",
                "/".join(f"{x:.1f}" for x in m["first_step_s"]),
                f"{m['tokens_per_step_median']:.0f}",
                f"{m['tokens_per_s_median']:.0f}",
                f"{m['rollout_s_median']:.2f}",
                f"{m['sample_s_median']:.2f}",
                f"{m['update_s_median']:.2f}",
                f"{m['peak_rss_mib_max']:.0f}",
                f"{m['reward_first_step_mean']:+.3f}",
                f"{m['reward_last_mean']:+.3f}",
                f"{m['accuracy_last_mean']:.3f}",
                f"{m['truncation_last_mean']:.3f}",
            )
    console.print(table)
    for r in result["models"]:
        console.print(
            f"[bold]{r['model']}[/bold]: {r['fastest']['trl']} s/step ÷ {r['fastest']['ours']} "
            f"s/step = {r['ratio_trl_over_ours_s_per_step']:.2f} (target ≥ 3); tok/s ratio "
            f"{r['ratio_ours_over_trl_tokens_per_s']:.2f}; TRL prompt ids = ours: "
            f"{r['trl_prompt_ids_match']}"
        )
        if "ours_dynamic_sampling" in r:
            ds = r["ours_dynamic_sampling"]
            console.print(
                f"  dynamic sampling (gen batch {ds['gen_batch_size']}): generation batches "
                f"per step {ds['gen_batches_per_step']}, prompts trained "
                f"{ds['prompts_trained_per_step']}"
            )
        for name, m in r["trainers"].items():
            f = m["flops"]
            if f:
                console.print(
                    f"  {name} FLOPs/step: rollout {f['rollout_gflop']:.2f} GFLOP, update "
                    f"{f['update_gflop']:.2f} GFLOP ({100 * f['update_rows_run']:.0f}% of rows "
                    f"run); sampling {f['sample_gflops']:.1f} GFLOP/s "
                    f"({100 * f['sample_of_peak']:.1f}% of peak), whole rollout "
                    f"{f['rollout_gflops']:.1f} ({100 * f['rollout_of_peak']:.1f}%), update "
                    f"{f['update_gflops']:.1f} ({100 * f['update_of_peak']:.1f}%), whole step "
                    f"{f['step_gflops']:.1f} ({100 * f['step_of_peak']:.1f}%) of the "
                    f"{m['dtype']} peak"
                )
    console.print(f"total wall time {result['wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    start = time.perf_counter()
    models_dir = Path(
        args.models_dir
        or os.environ.get("DAPO_HOME")
        or Path(tempfile.gettempdir()) / "dapo_cli-bench-models"
    )
    for size in args.sizes:  # one-off, before anything is timed
        warm_model(size, args, models_dir)
    mm = matmul_peak(args.matmul_sizes, args.matmul_repeats)
    peaks = {"matmul": mm}
    if "bfloat16" in args.ours_dtypes + args.trl_dtypes or "auto" in args.ours_dtypes:
        peaks["matmul_bf16"] = matmul_peak(args.matmul_sizes, args.matmul_repeats, torch.bfloat16)
    by_dtype = {p["dtype"]: p["peak_gflops"] for p in peaks.values()}
    models = []
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        for size in args.sizes:
            models.append(bench_size(size, args, models_dir, Path(tmp), by_dtype))
    import transformers
    import trl

    result = {
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "settings": {
            k: getattr(args, k)
            for k in (
                "sizes",
                "steps",
                "prompts",
                "group",
                "max_new_tokens",
                "micro_batch",
                "lr",
                "reward",
                "repeats",
                "seed",
                "warm_steps",
                "warm_batch",
                "warm_lr",
                "num_samples",
                "reward_window",
                "ds_gen_factor",
                "ds_steps",
                "quick",
                "ours_dtypes",
                "trl_dtypes",
                "system",
            )
        },  # fmt: skip
        **peaks,
        "models": models,
        "wall_s": time.perf_counter() - start,
    }
    print_report(result)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
