"""Where a DAPO step's time goes: one step under ``torch.profiler``, after a warm-up step.

Loads ``--model`` (a folder, .gguf file or embedded size) in ``--dtype`` (default auto: bf16
compute with fp32 master weights on a CPU with native bf16), runs ``step.dapo_step`` with
the alternating reward (every row trains) and prints the operators by self CPU time; the
rows ``rollout`` (``collect_batch``) and ``update`` give each phase's total.

Run from the repository root::

    python -m benchmarks.profile_step --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    python -m benchmarks.profile_step --model tiny-1m --quick
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.common import DapoSteps, bench_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder, .gguf file or embedded size")
    p.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--length", type=int, default=64, help="max new tokens")
    p.add_argument("--micro", type=int, default=16, help="rows per forward/backward")
    p.add_argument("--rows", type=int, default=25, help="operators shown per phase")
    p.add_argument("--trace", type=Path, help="also write a Chrome trace here")
    p.add_argument("--output", type=Path, help="write the tables as JSON")
    p.add_argument("--quick", action="store_true", help="2 prompts x 2, 8 tokens")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.group, args.length, args.micro = 2, 2, 8, 4
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import dapo_cli.step as step
    from dapo_cli.policy import load_policy
    from dapo_cli.scale.distributed import SINGLE
    from dapo_cli.scale.trained_model import prepare_trained

    config = bench_config(args.group, args.length, args.prompts, args.micro, "train.lr=1e-6")
    policy = load_policy(args.model, device="cpu", dtype=args.dtype)
    trained = prepare_trained(policy.model, SINGLE)
    steps = DapoSteps(policy, trained, config, 2, reward="alternate")
    steps.step()  # warm-up: first-call costs are not what a run pays per step
    collect, update = step.collect_batch, step.update

    def labelled(name, fn):
        def run(*a, **kw):
            with record_function(name):
                return fn(*a, **kw)

        return run

    step.collect_batch, step.update = labelled("rollout", collect), labelled("update", update)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            metrics = steps.step()
    finally:
        step.collect_batch, step.update = collect, update
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    events = prof.key_averages()
    total = metrics["step_time"]
    print(f"model {args.model} ({policy.model.dtype}), {args.prompts} prompts x G "
          f"{args.group}, {args.length} new tokens, micro-batch {args.micro}: step "
          f"{total:.2f} s, rollout {metrics['gen_time']:.2f} s, update "
          f"{total - metrics['gen_time']:.2f} s (profiled; {torch.get_num_threads()} "
          "threads)")  # fmt: skip
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.output:
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]
        rows = [{"name": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count}
                for e in top]  # fmt: skip
        args.output.write_text(json.dumps({"metrics": metrics, "ops": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
