"""Scaling benchmark: DAPO step time and peak memory against G, response length, model size
and micro-batch size; and one step of a Qwen2.5-0.5B-shaped model.

Every configuration runs in its own subprocess (so its peak RSS is its own): it loads the
model, runs ``--steps`` full DAPO steps (``step.dapo_step``: sample, score, update) on
generated medium math prompts, and reports the median step time of the steps after the
first, the generation share, tokens, and the peak RSS (``ru_maxrss``) before the first step
and at the end. The models are random-init (no warm start), so every response runs to
``max_new_tokens`` (a random model almost never samples EOS): the worst case for time and
memory, and the same token count in every repeat. The reward is a coin a random model can
win: a response is "correct" when its decoded text has an even number of characters, so
groups are mixed, advantages are non-zero and the update runs on (nearly) every row (the
trainer skips rows with advantage 0; the fraction skipped is reported). Dynamic sampling
and overlong filtering are off (every response of a random model is truncated, and filtered
rows would not be trained).

``--qwen05b`` also runs one such DAPO step on a model with Qwen2.5-0.5B's shape (24 layers,
hidden 896, 14 heads / 2 KV heads, MLP 4864, vocabulary 151,936, tied embeddings: 494M
parameters), random init from the config, with gradient checkpointing and micro-batches,
and reports its peak RSS and step time. Its reward alternates (every other response wins),
because a random 151,936-way model mostly samples ids the embedded 1,024-entry tokenizer
decodes to nothing, so the text-length coin would give whole groups the same reward.

Run from the repository root::

    python -m benchmarks.bench_scaling               # the grid (~15 min on 2 cores)
    python -m benchmarks.bench_scaling --qwen05b     # the grid, then the 0.5B step
    python -m benchmarks.bench_scaling --quick       # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DapoSteps, bench_config, build_qwen05b, rss_mib

WORKER_FLAG = "--worker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["tiny-1m", "tiny-10m"],
        help="embedded models (random init), or model folders / .gguf files",
    )
    p.add_argument(
        "--dtype", default="auto", help="compute dtype: auto (dapo_cli's), float32, bfloat16"
    )
    p.add_argument("--groups", nargs="+", type=int, default=[4, 8, 16], help="G values")
    p.add_argument("--lengths", nargs="+", type=int, default=[32, 64, 128], help="max new tokens")
    p.add_argument("--base-group", type=int, default=8, help="G while the length varies")
    p.add_argument("--base-length", type=int, default=64, help="length while G varies")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--micro", type=int, default=32, help="responses per forward/backward")
    p.add_argument(
        "--micro-sweep", nargs="*", type=int, default=[8, 32, 128],
        help="micro-batch sizes for the memory rows (largest model, largest G and length)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=3, help="steps per config; the first is warm-up")
    p.add_argument("--qwen05b", action="store_true", help="also one step of a 0.5B-shaped model")
    p.add_argument("--no-grid", action="store_true", help="skip the grid (e.g. with --qwen05b)")
    p.add_argument(
        "--no-checkpointing", action="store_true",
        help="the 0.5B-shaped step without gradient checkpointing (to see what it saves)",
    )  # fmt: skip
    p.add_argument("--models-dir", default=None, help="where embedded models are built/reused")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.groups, args.lengths = ["tiny-1m"], [2, 4], [8, 16]
        args.base_group, args.base_length, args.prompts, args.steps = 2, 8, 2, 2
        args.micro_sweep = [4, 16]
    return args


# --- the worker: one configuration in its own process ----------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from dapo_cli.policy import load_policy
    from dapo_cli.scale.distributed import SINGLE
    from dapo_cli.scale.trained_model import prepare_trained

    config = bench_config(spec["group"], spec["length"], spec["prompts"], spec["micro"])
    policy = load_policy(spec["model_dir"], dtype=spec.get("dtype", "auto"))
    trained = prepare_trained(
        policy.model, SINGLE, gradient_checkpointing=bool(spec.get("gradient_checkpointing"))
    )
    runner = DapoSteps(policy, trained, config, spec["steps"], spec.get("reward", "length"))
    rss_loaded = rss_mib()
    steps = []
    for _ in range(spec["steps"]):
        m = runner.step()
        keys = ("step_time", "gen_time", "tokens_generated", "rows_skipped")
        steps.append({k: m[k] for k in keys})
    timed = steps[1:] or steps
    return {
        **spec,
        "params": sum(p.numel() for p in policy.model.parameters()),
        "compute_dtype": str(policy.model.dtype).removeprefix("torch."),
        "steps_raw": steps,
        "step_s": statistics.median(s["step_time"] for s in timed),
        "gen_s": statistics.median(s["gen_time"] for s in timed),
        "tokens": statistics.median(s["tokens_generated"] for s in timed),
        "rows_skipped": statistics.fmean(s["rows_skipped"] for s in timed),
        "rss_loaded_mib": rss_loaded,
        "rss_peak_mib": rss_mib(),
    }


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scaling", WORKER_FLAG, json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"worker failed for {spec}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the 0.5B-shaped step through the CLI ----------------------------------------------


def qwen05b_step(workdir: Path, checkpointing: bool = True) -> dict[str, Any]:
    """One DAPO step of the 0.5B-shaped model in a worker (its own process and peak RSS)."""
    spec = {
        "size": "qwen2.5-0.5b-shape", "model_dir": str(build_qwen05b(workdir / "qwen05b")),
        "group": 4, "length": 32, "prompts": 4, "micro": 4, "steps": 1,
        "gradient_checkpointing": checkpointing, "reward": "alternate",
    }  # fmt: skip
    return run_worker(spec)


# --- the grid --------------------------------------------------------------------------


def grid(args) -> list[dict[str, Any]]:
    specs = []
    for size in args.sizes:
        for g in args.groups:
            specs.append(
                {"size": size, "group": g, "length": args.base_length, "micro": args.micro}
            )
        for n in args.lengths:
            if n != args.base_length:
                specs.append({"size": size, "group": args.base_group, "length": n,
                              "micro": args.micro})  # fmt: skip
    for micro in args.micro_sweep:
        specs.append({"size": args.sizes[-1], "group": max(args.groups),
                      "length": max(args.lengths), "micro": micro})  # fmt: skip
    unique = []
    for s in specs:
        if s not in unique:
            unique.append(s)
    return unique


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("model", "G", "len", "micro", "rows", "tokens", "step s", "gen s", "update s",
            "rows skipped", "RSS loaded MiB", "RSS peak MiB")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = (Path(r["size"]).name, r["group"], r["length"], r["micro"],
                 r["prompts"] * r["group"],
                 f"{r['tokens']:.0f}", f"{r['step_s']:.2f}", f"{r['gen_s']:.2f}",
                 f"{r['step_s'] - r['gen_s']:.2f}", f"{r['rows_skipped']:.0%}",
                 f"{r['rss_loaded_mib']:.0f}",
                 f"{r['rss_peak_mib']:.0f}")  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == WORKER_FLAG:
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return 0
    args = parse_args(argv)
    import torch

    from dapo_cli.models import embedded_base

    models_dir = Path(
        args.models_dir
        or os.environ.get("DAPO_HOME")
        or Path(tempfile.gettempdir()) / "dapo_cli-bench-models"
    )
    dirs = {
        size: size if Path(size).exists() else str(embedded_base(size, models_dir))
        for size in args.sizes
    }
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")  # fmt: skip
    print(f"settings: {args.prompts} prompts/step, {args.steps} steps per config "
          f"(median of all but the first), dtype {args.dtype}, dynamic sampling off")  # fmt: skip
    rows = []
    for spec in [] if args.no_grid else grid(args):
        spec = {**spec, "prompts": args.prompts, "steps": args.steps,
                "model_dir": dirs[spec["size"]], "dtype": args.dtype}  # fmt: skip
        t0 = time.perf_counter()
        rows.append(run_worker(spec))
        print(f"  done {spec['size']} G={spec['group']} len={spec['length']} "
              f"micro={spec['micro']} in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    if rows:
        print_table(rows)
    result: dict[str, Any] = {"grid": rows}
    if args.qwen05b:
        with tempfile.TemporaryDirectory(prefix="dapo-qwen05b-") as tmp:
            q = qwen05b_step(Path(tmp), checkpointing=not args.no_checkpointing)
        result["qwen05b"] = q
        print(f"Qwen2.5-0.5B-shaped ({q['params'] / 1e6:.0f}M parameters), one DAPO step, "
              f"{q['prompts']} prompts x G={q['group']}, {q['length']} new tokens, micro-batch "
              f"{q['micro']}, gradient checkpointing "
              f"{'off' if args.no_checkpointing else 'on'}: step {q['step_s']:.1f} s (generation "
              f"{q['gen_s']:.1f} s), rows skipped {q['rows_skipped']:.0%}, RSS after loading "
              f"{q['rss_loaded_mib']:.0f} MiB, peak RSS {q['rss_peak_mib']:.0f} MiB")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
