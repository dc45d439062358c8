"""Memory per process under DDP and FSDP: the same DAPO steps on 2 processes (torchrun,
gloo on CPU), once with every rank holding the whole model and optimiser (DDP) and once
sharded (FSDP2, ``train.parallelism=fsdp``, what ``accelerate launch`` with
``templates/accelerate/fsdp.yaml`` selects).

Each mode runs in its own ``torch.distributed.run`` job; every rank reports its peak RSS
(``ru_maxrss``), its RSS after loading and preparing the model, and its step times; the
table shows the largest rank. Model: the Qwen2.5-0.5B shape (``bench_scaling.build_qwen05b``,
random init, 494M parameters) or an embedded size. Reward: every other response wins (as in
``bench_scaling.py --qwen05b``), so every row is trained. Dynamic sampling and overlong
filtering off; fp32 AdamW; gradient checkpointing on unless ``--no-checkpointing``.

Run from the repository root::

    python -m benchmarks.bench_fsdp                      # 0.5B-shaped, 2 processes (~10 min)
    python -m benchmarks.bench_fsdp --model tiny-1m --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DapoSteps, bench_config, build_qwen05b, rss_mib  # noqa: E402

WORKER_FLAG = "--worker"


def worker(spec: dict[str, Any]) -> None:
    """One rank of one mode (run under torch.distributed.run)."""
    from dapo_cli.policy import load_policy
    from dapo_cli.scale import trained_model
    from dapo_cli.scale.distributed import from_env

    dist = from_env()
    config = bench_config(spec["group"], spec["length"], spec["prompts"], spec["micro"],
                          f"train.parallelism={spec['mode']}")  # fmt: skip
    policy = load_policy(spec["model_dir"])
    dist.broadcast_params(policy.model)
    trained = trained_model.prepare_trained(
        policy.model,
        dist,
        parallelism=config.train.parallelism,
        gradient_checkpointing=spec["checkpointing"],
    )
    runner = DapoSteps(policy, trained, config, spec["steps"], "alternate", dist)
    rss_loaded = rss_mib()
    steps = []
    for _ in range(spec["steps"]):
        m = runner.step()
        steps.append({k: m[k] for k in ("step_time", "gen_time", "rows_skipped")})
    mine = {"rank": dist.rank, "rss_loaded_mib": rss_loaded, "rss_peak_mib": rss_mib(),
            "steps": steps}  # fmt: skip
    everyone = dist.gather(mine)
    if dist.main:
        print(json.dumps({**spec, "params": sum(p.numel() for p in policy.model.parameters()),
                          "ranks": everyone}))  # fmt: skip
    dist.close()


def run_mode(spec: dict[str, Any], processes: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(processes), "-m", "benchmarks.bench_fsdp", WORKER_FLAG,
           json.dumps(spec)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{spec['mode']} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen05b", help="qwen05b, tiny-1m or tiny-10m")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=["ddp", "fsdp"])
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--group", "-G", type=int, default=4)
    p.add_argument("--length", type=int, default=32, help="max new tokens")
    p.add_argument("--micro", type=int, default=2, help="responses per forward/backward")
    p.add_argument("--steps", type=int, default=2, help="steps per mode (first is warm-up)")
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.group, args.length, args.steps = 2, 2, 8, 1

    import platform

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}; {args.processes} processes (gloo), "
          f"{max(1, (os.cpu_count() or 1) // args.processes)} thread(s) each")  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="dapo-bench-fsdp-") as tmp:
        if args.model == "qwen05b":
            model_dir = str(build_qwen05b(Path(tmp) / "qwen05b"))
        else:
            from dapo_cli.models import embedded_base

            model_dir = str(embedded_base(args.model))
        for mode in args.modes:
            spec = {"mode": mode, "model": args.model, "model_dir": model_dir,
                    "prompts": args.prompts, "group": args.group, "length": args.length,
                    "micro": args.micro, "steps": args.steps,
                    "checkpointing": not args.no_checkpointing}  # fmt: skip
            t0 = time.perf_counter()
            results.append(run_mode(spec, args.processes))
            print(f"  {mode}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n{args.model}, {args.prompts} prompts x G={args.group}, {args.length} new tokens, "
          f"micro-batch {args.micro}, gradient checkpointing "
          f"{'off' if args.no_checkpointing else 'on'}, {args.steps} step(s)")  # fmt: skip
    print("| mode | RSS after setup MiB (max rank) | peak RSS MiB (max rank) | step s (median) |")
    print("|---|--:|--:|--:|")
    for r in results:
        ranks = r["ranks"]
        timed = [s["step_time"] for s in ranks[0]["steps"][1:] or ranks[0]["steps"]]
        print(f"| {r['mode']} | {max(x['rss_loaded_mib'] for x in ranks):.0f} | "
              f"{max(x['rss_peak_mib'] for x in ranks):.0f} | "
              f"{statistics.median(timed):.1f} |")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == WORKER_FLAG:
        worker(json.loads(sys.argv[2]))
    else:
        raise SystemExit(main())
