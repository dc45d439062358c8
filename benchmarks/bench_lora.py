"""LoRA against full fine-tuning on a model of ≥100M parameters: DAPO step time and peak
memory, each way in its own subprocess (so its peak RSS is its own).

The model is SmolLM2-135M's shape (Llama: 30 layers, hidden 576, 9 heads / 3 KV heads, MLP
1536, vocabulary 49,152, tied embeddings: 134.5M parameters), random init, unless ``--model``
names a real one (e.g. the SmolLM2-135M-Instruct GGUF file of docs/real-model.md). Each way
runs ``--steps`` full DAPO steps (``step.dapo_step``: sample, score, update) of ``--prompts``
prompts × G responses of ``--length`` tokens, and reports the median time of the steps after
the first, its generation share, the trainable parameters and the peak RSS. The reward
alternates (every other response wins), so every row trains; dynamic sampling and overlong
filtering are off, as in bench_scaling.py.

Run from the repository root::

    python -m benchmarks.bench_lora                  # random 135M-shaped model (~6 min)
    python -m benchmarks.bench_lora --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    python -m benchmarks.bench_lora --quick          # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DapoSteps, bench_config, rss_mib

WORKER_FLAG = "--worker"
SMOLLM2_135M_SHAPE = {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a model folder or .gguf file (default: random 135M shape)")
    p.add_argument("--steps", type=int, default=4, help="DAPO steps per way (first not timed)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="responses per prompt (G)")
    p.add_argument("--length", type=int, default=32, help="max new tokens (all are used)")
    p.add_argument("--micro", type=int, default=8, help="responses per forward/backward")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="2 steps of 2 prompts x 4, 8 tokens")
    p.add_argument("--output", type=Path, help="write every figure as JSON")
    p.add_argument(WORKER_FLAG, nargs=2, metavar=("MODEL", "WAY"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.prompts, args.group, args.length = 2, 2, 4, 8
    return args


def build_model(folder: Path) -> Path:
    """Random-init Llama with SmolLM2-135M's shape, saved with the embedded tokenizer (its
    1,024 ids decode; the alternating reward needs no text)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from dapo_cli.models import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(**SMOLLM2_135M_SHAPE, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def worker(args: argparse.Namespace, model: str, way: str) -> dict:
    """One way ("full" or "lora"): load, steps, figures (printed as JSON on the last line)."""
    from dapo_cli import lora
    from dapo_cli.config import LoraSettings
    from dapo_cli.policy import load_policy

    config = bench_config(args.group, args.length, args.prompts, args.micro, "train.lr=1e-5")
    policy = load_policy(model, device="cpu", dtype="float32")
    if way == "lora":
        settings = LoraSettings(r=args.lora_r)
        policy.model = lora.add_adapters(policy.model, settings, model, seed=0).eval()
    trainable, total = lora.trainable_share(policy.model)
    rss_loaded = rss_mib()
    steps = DapoSteps(policy, policy.model, config, args.steps, reward="alternate")
    times, gen = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        metrics = steps.step()
        times.append(time.perf_counter() - t0)
        gen.append(metrics.get("gen_time", float("nan")))
    timed = times[1:] or times
    return {
        "way": way, "trainable": trainable, "parameters": total,
        "step_s_median": statistics.median(timed), "step_s": times,
        "gen_s_median": statistics.median(gen[1:] or gen),
        "rss_loaded_mib": rss_loaded, "rss_peak_mib": rss_mib(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args, *args.worker)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_model(Path(tmp) / "smollm2-135m-shape"))
        rows = []
        for way in ("full", "lora"):
            cmd = [sys.executable, "-m", "benchmarks.bench_lora", *(argv or sys.argv[1:]),
                   WORKER_FLAG, model, way]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    import torch

    cpu = platform.processor() or platform.machine()
    print(f"model: {args.model or 'random init, SmolLM2-135M shape'}; {args.prompts} prompts x "
          f"G {args.group}, {args.length} new tokens, micro-batch {args.micro}; "
          f"{args.steps} steps, median of all but the first; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {cpu}")  # fmt: skip
    print("| way | trainable params | step s | generation s | update s | peak RSS MiB |")
    print("|---|--:|--:|--:|--:|--:|")
    for r in rows:
        update = r["step_s_median"] - r["gen_s_median"]
        print(f"| {r['way']} | {r['trainable'] / 1e6:.2f}M of {r['parameters'] / 1e6:.1f}M "
              f"| {r['step_s_median']:.1f} | {r['gen_s_median']:.1f} | {update:.1f} "
              f"| {r['rss_peak_mib']:.0f} |")  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps({"settings": vars(args) | {"output": None},
                                           "rows": rows}, indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
