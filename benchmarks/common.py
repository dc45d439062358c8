"""What the benchmark scripts share: the machine's matmul peak, model shapes and FLOP counts,
prompts, peak memory, the DAPO settings they time and a stepper over ``step.dapo_step``.

Run every benchmark from the repository root as a module, e.g.
``python -m benchmarks.bench_rollout``; they print figures, they are not tests.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dapo_cli.datagen import generate_dataset


def rss_mib() -> float:
    """This process's peak resident memory in MiB (``ru_maxrss``: KiB on Linux, bytes on
    macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def matmul_peak(
    sizes: list[int], repeats: int, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Median GFLOP/s of ``torch.mm`` in ``dtype`` per size; the peak is the best median."""
    per_size = {}
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        torch.mm(a, b)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        per_size[n] = 2 * n**3 / statistics.median(times) / 1e9
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "gflops_per_size": per_size,
        "peak_gflops": max(per_size.values()),
    }


def print_peak(console, result: dict[str, Any]) -> None:
    """The matmul peak line (shared with bench_trl.py)."""
    peaks = [result["matmul"], *([result["matmul_bf16"]] if "matmul_bf16" in result else [])]
    for mm in peaks:
        sizes = ", ".join(f"{n}: {g:.1f}" for n, g in mm["gflops_per_size"].items())
        console.print(
            f"[bold]{mm.get('dtype', 'float32')} torch.mm peak[/bold]: {mm['peak_gflops']:.1f} "
            f"GFLOP/s (median per size {sizes}; {result['env']['torch_threads']} threads)"
        )


def model_shape(model) -> dict[str, int]:
    cfg = model.config
    emb = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return {
        "params": total,
        "non_embedding_params": total - emb,
        "hidden": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "vocab": cfg.vocab_size,
    }


def rollout_flops(shape: dict[str, int], rows: int, prompt_len: float, gen: int) -> float:
    """Rough forward FLOPs of a rollout of ``rows`` rows with mean real prompt length
    ``prompt_len`` that generated ``gen`` tokens in all (mean g = gen / rows per row).

    Per token processed (prompt and generated): 2 × (non-embedding params + LM head
    hidden × vocab) for the matmuls. Attention (QKᵀ and AV): 2 × layers × hidden × context
    per token, summed over the context each token sees: per row p²/2 (prefill) + g·p + g²/2
    (decode). The prefill's LM head runs on the last position only, but its share is small
    and is counted for every prompt token; padding and finished rows are not counted.
    """
    dense = 2 * (shape["non_embedding_params"] + shape["hidden"] * shape["vocab"])
    g = gen / rows
    tokens = rows * prompt_len + gen
    context_sum = rows * (prompt_len**2 / 2 + g * prompt_len + g**2 / 2)
    return dense * tokens + 2 * shape["layers"] * shape["hidden"] * context_sum


def prompts_for(n: int) -> list[str]:
    records = generate_dataset(n, ["math"], seed=0, difficulty="medium", test_fraction=0.0)
    return [r["prompt"] for r in records[:n]]


def count_generate_tokens(new_ids: torch.Tensor, stop_ids: list[int]) -> int:
    """Tokens generated per row up to and including the first stop id (the rest is pad)."""
    is_stop = torch.isin(new_ids, torch.tensor(stop_ids, dtype=new_ids.dtype))  # (B, T)
    t = new_ids.size(1)
    first = torch.where(
        is_stop.any(1),
        is_stop.long().argmax(1) + 1,
        torch.full_like(is_stop[:, 0], t, dtype=torch.long),
    )
    return int(first.sum())


def bench_config(group: int, length: int, prompts: int, micro: int, *extra: str):
    """The benchmarks' DAPO settings: one mini-batch of ``prompts`` × ``group`` responses,
    dynamic sampling and overlong filtering off (a random model's responses are all
    truncated), no warm-up; ``extra``: more ``section.key=value`` overrides."""
    from dapo_cli.config import load_config

    return load_config(None, [
        f"rollout.group_size={group}", f"rollout.max_new_tokens={length}",
        f"algorithm.overlong_cache_len={max(length // 8, 1)}",
        "algorithm.dynamic_sampling=false", "algorithm.overlong_filtering=false",
        f"train.train_batch_size={prompts}", f"train.mini_batch_size={prompts}",
        f"train.micro_batch_size={micro}", "train.warmup_steps=0", *extra,
    ])  # fmt: skip


class DapoSteps:
    """Full DAPO steps (``step.dapo_step``: sample, score, update ``trained``) on
    generated medium math prompts whose task is the coin ``reward``: ``alternate`` (every
    other response wins: each group half/half) or ``length`` (an even number of characters
    wins). Sampling draws from a generator on the policy's device, seeded ``rank``."""

    def __init__(
        self, policy, trained, config, n_steps: int, reward: str = "length", dist=None,
        sampler=None,
    ):  # fmt: skip
        import itertools
        import random

        import torch

        from dapo_cli.datagen import generate_dataset
        from dapo_cli.rewards import register_verifier
        from dapo_cli.scale.distributed import SINGLE
        from dapo_cli.step import TORCH_SAMPLER, PromptStream, lr_lambda
        from dapo_cli.tasks.base import Score

        if reward == "alternate":
            flips = itertools.count()
            register_verifier("bench-coin", lambda s, text: Score.binary(next(flips) % 2 == 0))
        else:
            register_verifier("bench-coin", lambda s, text: Score.binary(len(text) % 2 == 0))
        n = max(64, config.train.train_batch_size * n_steps)
        data = generate_dataset(n, ["math"], seed=0, test_fraction=0.0)
        self.policy, self.trained, self.config = policy, trained, config
        self.dist = dist or SINGLE
        self.optimizer = torch.optim.AdamW(trained.parameters(), lr=config.train.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.stream = PromptStream([{**d, "task_type": "bench-coin"} for d in data], seed=0)
        self.generator = torch.Generator(device=policy.device).manual_seed(self.dist.rank)
        self.rng = random.Random(0)
        # a vllm_engine.VllmEngine over policy, or None: our sampler
        self.sampler = sampler or TORCH_SAMPLER

    def step(self) -> dict[str, float]:
        from dapo_cli.step import StepState, dapo_step

        return dapo_step(
            StepState(
                self.policy, self.optimizer, self.scheduler, self.stream, self.generator,
                self.rng, None, self.dist, self.trained, self.sampler,
            ),
            self.config,
        )  # fmt: skip


QWEN05B_SHAPE = {
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}  # fmt: skip


def build_qwen05b(folder: Path) -> Path:
    """Random-init Qwen2 with Qwen2.5-0.5B's shape, saved with the embedded tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from dapo_cli.models import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        **QWEN05B_SHAPE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
