"""Evaluation: avg@k (mean correctness over k samples per prompt, as the paper reports avg@32)
and pass@k (the unbiased estimator from n ≥ k samples), per task type and overall, with the
same batched sampler the trainer uses."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from dapo_cli.policy import Policy
from dapo_cli.rewards import score_batch
from dapo_cli.rollout import Sampling, TorchSampler
from dapo_cli.tasks.base import extract_answer


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
    *,
    k: int = 8,
    temperature: float = 1.0,
    top_p: float = 0.7,
    top_k: int = 0,
    greedy: bool = False,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_prompts: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """k completions per sample (1 when greedy), scored. One dict per completion."""
    n = 1 if greedy else k
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, greedy)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(samples), batch_prompts):
        chunk = samples[start : start + batch_prompts]
        prompts = policy.prompts_ids([s["prompt"] for s in chunk])
        rollout = TorchSampler().sample(policy, prompts, n, sampling, generator)
        texts = rollout.response_texts(policy.tokenizer)
        scores = score_batch(chunk, texts, n)
        lengths = rollout.lengths.tolist()
        truncated = rollout.truncated.tolist()
        for i, (text, s) in enumerate(zip(texts, scores, strict=True)):
            owner = chunk[i // n]
            rows.append({
                "id": owner["id"], "task_type": owner["task_type"], "sample_index": i % n,
                "completion": text, "extracted": extract_answer(text), "reward": s.reward,
                "correct": s.correct, "length": lengths[i], "truncated": truncated[i],
            })  # fmt: skip
        if on_progress:
            on_progress(len(chunk))
    return rows


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
