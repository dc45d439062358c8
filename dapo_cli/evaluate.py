"""Evaluation: avg@k (mean correctness over k samples per prompt, as the paper reports avg@32)
and pass@k (the unbiased estimator from n ≥ k samples), per task type and overall, with the
same batched sampler the trainer uses."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from dapo_cli.config import EvalSettings
from dapo_cli.paths import resolve_db_path
from dapo_cli.policy import Policy, load_policy
from dapo_cli.rewards import score_batch
from dapo_cli.rollout import Sampling, TorchSampler
from dapo_cli.runlog import RunLog, log_path, metrics_text
from dapo_cli.store import Store
from dapo_cli.tasks.answers import final_answer
from dapo_cli.tasks.base import Scoring


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k draws without replacement from n samples is correct), given c
    correct: 1 − C(n−c, k) / C(n, k) (Chen et al. 2021)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def generate_and_score(
    policy: Policy,
    samples: list[dict[str, Any]],
    settings: EvalSettings,
    *,
    batch_prompts: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """k completions per sample (1 when greedy), scored. One dict per completion."""
    n = settings.samples_per_prompt
    generator = torch.Generator(device=policy.device).manual_seed(settings.seed)
    sampling = Sampling(
        settings.max_new_tokens, settings.temperature, settings.top_p, greedy=settings.greedy
    )
    rows: list[dict[str, Any]] = []
    for start in range(0, len(samples), batch_prompts):
        chunk = samples[start : start + batch_prompts]
        prompts = policy.prompts_ids([s["prompt"] for s in chunk])
        rollout = TorchSampler().sample(policy, prompts, n, sampling, generator)
        texts = rollout.response_texts(policy.tokenizer)
        scores = score_batch(chunk, texts, n, settings.scoring)
        lengths = rollout.lengths.tolist()
        truncated = rollout.truncated.tolist()
        for i, (text, s) in enumerate(zip(texts, scores, strict=True)):
            owner = chunk[i // n]
            rows.append({
                "id": owner["id"], "task_type": owner["task_type"], "sample_index": i % n,
                "completion": text, "extracted": _extracted(text, settings.scoring),
                "reward": s.reward, "correct": s.correct, "length": lengths[i],
                "truncated": truncated[i],
            })  # fmt: skip
        if on_progress:
            on_progress(len(chunk))
    return rows


def _extracted(text: str, scoring: Scoring) -> str | None:
    """The final answer the math verifier reads in ``text`` (shown per sample)."""
    found = final_answer(text, scoring.last_number)
    return found[0] if found else None


def summarize(rows: list[dict[str, Any]], k: int) -> dict[str, dict[str, float]]:
    """Per task type and ``all``: avg@k, pass@k (and pass@1), mean reward, length, truncation."""
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_type[row["task_type"]].append(row)
        by_type["all"].append(row)
    out = {}
    for task_type, group in sorted(by_type.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        per_prompt: dict[str, list[bool]] = defaultdict(list)
        for row in group:
            per_prompt[row["id"]].append(row["correct"])
        n = min(len(v) for v in per_prompt.values())
        kk = min(k, n)
        out[task_type] = {
            "prompts": float(len(per_prompt)),
            f"avg@{n}": sum(map(float, (r["correct"] for r in group))) / len(group),
            f"pass@{kk}": sum(pass_at_k(len(v), sum(v), kk) for v in per_prompt.values())
            / len(per_prompt),
            "reward_mean": sum(r["reward"] for r in group) / len(group),
            "length_mean": sum(r["length"] for r in group) / len(group),
            "length_max": float(max(r["length"] for r in group)),
            "truncation_rate": sum(map(float, (r["truncated"] for r in group))) / len(group),
        }
    return out


def evaluate_models(
    models: list[str],
    samples: list[dict[str, Any]],
    settings: EvalSettings,
    *,
    db_path: str | os.PathLike | None = None,
    data: str = "",
    on_model: Callable[[str], Callable[[int], None] | None] = lambda name: None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``dapo eval`` as one call: every model (loaded first, so a bad path fails before any
    work) on the same ``samples`` with the same seed, each a recorded run (the store's
    ``eval`` run with its summary, and a plain-text log beside the store). ``on_model(name)``
    is told each model as it starts and may return a progress callback (prompts done).
    Returns (the recorded settings, one result per model: model, run_id, summary, samples)."""
    n = settings.samples_per_prompt
    recorded = {
        "k": n, "temperature": settings.temperature, "top_p": settings.top_p,
        "greedy": settings.greedy, "max_new_tokens": settings.max_new_tokens,
        "seed": settings.seed, "split": settings.split, "data": data,
        "data_hash": data_hash(samples), "prompts": len(samples),
    }  # fmt: skip
    if settings.system is not None:
        recorded["system"] = settings.system
    if settings.template is not None:
        recorded["template"] = settings.template
    if settings.scoring != Scoring():  # recorded when it changes what counts
        recorded |= dataclasses.asdict(settings.scoring)
    policies = [(name, load_policy(name, dtype=settings.dtype)) for name in models]
    recorded["dtype"] = str(policies[0][1].model.dtype).removeprefix("torch.")
    for _, policy in policies:
        policy.system = settings.system
        policy.template = settings.template
    store = Store(resolve_db_path(db_path))
    results: list[dict[str, Any]] = []
    for name, policy in policies:
        on_progress = on_model(name)
        run_id = store.start_run("eval", recorded, name)
        log = RunLog()
        log.open(log_path(store.path, "eval", run_id))
        log.line(f"eval of {name}: {json.dumps(recorded)}")
        try:
            rows = generate_and_score(policy, samples, settings, on_progress=on_progress)
        except BaseException as exc:
            store.finish_run(run_id, "failed")
            log.line(f"failed: {type(exc).__name__}: {exc}")
            log.close()
            raise
        summary = summarize(rows, n)
        store.log_metrics(
            run_id, 0, {f"{t}/{m}": v for t, ms in summary.items() for m, v in ms.items()}
        )
        store.finish_run(run_id, "completed")
        for task_type, metrics in summary.items():
            log.line(f"{task_type} {metrics_text(metrics)}")
        log.close()
        results.append({"model": name, "run_id": run_id, "summary": summary, "samples": rows})
    return recorded, results


def data_hash(samples: list[dict[str, Any]]) -> str:
    """Which prompts were evaluated, in a few characters (recorded with each eval run)."""
    return hashlib.sha256("\n".join(s["id"] for s in samples).encode()).hexdigest()[:16]
