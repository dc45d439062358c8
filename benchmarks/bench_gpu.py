"""GPU benchmark and check: what `dapo train` does on a CUDA device, measured.

Needs a CUDA GPU (exits with a message otherwise). In one process it measures:

1. **Matmul peaks** on the GPU: median TFLOP/s of ``torch.mm`` on square bf16 and fp32
   matrices (fp32 with TF32 off: the IEEE rate).
2. **Rollout** on the GPU: ``dapo_cli.rollout.sample`` ("ours") against ``model.generate``
   (same model object, prompts, batch, ``max_new_tokens``; EOS disabled, so every row
   generates exactly ``max_new_tokens``; both under ``torch.inference_mode()``; one warm-up
   each, then alternating repeats; CUDA synchronised before each clock read). Two more rows
   sample as a training step does, with other prompts on every call (``repeat=G``), once as
   ``dapo train`` runs (SDPA's cuDNN backend off, see ``rollout.attention_backends``) and
   once with it allowed. Models: the
   embedded ``tiny-10m`` (fp32) and a random-init Qwen2.5-0.5B-shaped model (bf16, the dtype
   ``model.dtype=auto`` picks on a bf16-capable GPU), at several batch sizes.
3. **DAPO steps** of the 0.5B-shaped model in bf16 (``step.dapo_step``: sample, score,
   update), trained as ``dapo train`` trains it: fp32 master weights under bf16 autocast
   (``trained_model.prepare_trained``), gradient checkpointing, micro-batches. Reports the median
   step time of the steps after the first, the generation share, peak GPU memory
   (``torch.cuda.max_memory_allocated``), and checks that the update moved the bf16 rollout
   weights (the fp32 master copy is copied back into them after every step).

The 0.5B-shaped model's reward alternates within each group (every other response wins), as
in ``bench_scaling.py --qwen05b``: a random model's text cannot earn a task reward.

Run from the repository root on a machine with a GPU::

    python -m benchmarks.bench_gpu                        # ~3 min on one H100
    python -m benchmarks.bench_gpu --output gpu.json      # also all numbers as JSON
    python -m benchmarks.bench_gpu --quick                # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (  # noqa: E402
    DapoSteps,
    bench_config,
    build_qwen05b,
    count_generate_tokens,
    model_shape,
    prompts_for,
    rollout_flops,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", nargs="+", type=int, default=[128, 512], help="rollout rows")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    p.add_argument("--group", "-G", type=int, default=8, help="G of the DAPO steps")
    p.add_argument("--prompts", type=int, default=16, help="prompts per DAPO step")
    p.add_argument("--micro", type=int, default=32, help="responses per forward/backward")
    p.add_argument("--steps", type=int, default=3, help="DAPO steps; the first is warm-up")
    p.add_argument("--skip", nargs="*", default=[], help="parts to skip: matmul rollout step")
    p.add_argument(
        "--profile", default=None,
        help="after the DAPO steps, profile one more generation batch (torch.profiler) and "
        "write its top operators and kernels, by host and by device time, to this file",
    )  # fmt: skip
    p.add_argument("--models-dir", default=None, help="where models are built (default: temp)")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test here
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.max_new_tokens, args.repeats = [16], 16, 1
        args.prompts, args.group, args.steps, args.micro = 2, 4, 2, 4
    return args


DEVICE = "cuda"


def clock() -> float:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_mib() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else float("nan")


# --- 1. matmul peaks -------------------------------------------------------------------


def matmul_peaks(sizes=(4096, 8192), repeats: int = 10) -> dict[str, float]:
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    try:
        for dtype in (torch.bfloat16, torch.float32):
            best = 0.0
            for n in sizes:
                a = torch.randn(n, n, device=DEVICE, dtype=dtype)
                b = torch.randn(n, n, device=DEVICE, dtype=dtype)
                torch.mm(a, b)
                times = []
                for _ in range(repeats):
                    t0 = clock()
                    torch.mm(a, b)
                    times.append(clock() - t0)
                best = max(best, 2 * n**3 / statistics.median(times) / 1e12)
            out[str(dtype).removeprefix("torch.")] = best
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    return out


# --- 2. rollouts -----------------------------------------------------------------------


def timed_ours(policy, ids, mask, stop_ids, max_new, seed) -> tuple[float, int]:
    from dapo_cli.rollout import sample

    gen = torch.Generator(device=ids.device).manual_seed(seed)
    with torch.inference_mode():
        t0 = clock()
        r = sample(
            policy.model, ids, mask, max_new_tokens=max_new, eos_token_ids=stop_ids,
            pad_token_id=policy.pad_id, temperature=1.0, top_p=1.0, generator=gen,
        )  # fmt: skip
        dt = clock() - t0
    return dt, int(r.response_mask.sum())


def timed_ours_new_prompts(policy, prompts, group, stop_ids, max_new, seed) -> tuple[float, int]:
    """As ``collect_batch`` samples: each prompt encoded once, ``repeat=group`` (the G copies
    share its prefill), and, unlike the other runners, other prompts on every call (so
    another padded prompt length, as from one training step to the next)."""
    from dapo_cli.rollout import sample

    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    with torch.inference_mode():
        t0 = clock()
        ids, mask = policy.encode(prompts)
        r = sample(
            policy.model, ids, mask, max_new_tokens=max_new, eos_token_ids=stop_ids,
            pad_token_id=policy.pad_id, temperature=1.0, top_p=1.0, generator=gen,
            repeat=group,
        )  # fmt: skip
        dt = clock() - t0
    return dt, int(r.response_mask.sum())


def timed_generate(policy, ids, mask, stop_ids, max_new, seed) -> tuple[float, int]:
    torch.manual_seed(seed)
    with torch.inference_mode():
        t0 = clock()
        out = policy.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
            top_k=0, max_new_tokens=max_new, eos_token_id=stop_ids, pad_token_id=policy.pad_id,
        )  # fmt: skip
        dt = clock() - t0
    return dt, count_generate_tokens(out[:, ids.size(1) :].cpu(), stop_ids)


def bench_rollouts(name: str, policy, args, peaks: dict[str, float]) -> list[dict[str, Any]]:
    shape = model_shape(policy.model)
    dtype = str(policy.model.dtype).removeprefix("torch.")
    stop_ids = [shape["vocab"] + 7]  # never sampled: every row runs max_new_tokens
    rows = []
    for batch in args.batches:
        group = 8 if batch % 8 == 0 else 1
        n = batch // group
        pool = prompts_for(n * (args.repeats + 2))  # fresh prompts for every new-prompts call
        ids, mask = policy.encode(pool[:n], repeat=group)
        prompt_len = int(mask.sum()) / ids.size(0)
        calls = itertools.count(1)

        def new_prompts(policy, ids, mask, stop_ids, max_new, seed, calls=calls, pool=pool,
                        n=n, group=group):  # fmt: skip
            i = next(calls) % (args.repeats + 2)
            chunk = pool[i * n : (i + 1) * n]
            return timed_ours_new_prompts(policy, chunk, group, stop_ids, max_new, seed)

        def new_prompts_cudnn(*a, **k):  # the same, with SDPA's cuDNN backend allowed
            import contextlib

            from dapo_cli import rollout

            avoiding = rollout.attention_backends
            rollout.attention_backends = lambda device: contextlib.nullcontext()
            try:
                return new_prompts(*a, **k)
            finally:
                rollout.attention_backends = avoiding

        runners = {"ours": timed_ours, "generate": timed_generate, "ours_new_prompts": new_prompts,
                   "ours_new_prompts_cudnn": new_prompts_cudnn}  # fmt: skip
        res: dict[str, list[tuple[float, int]]] = {k: [] for k in runners}
        for fn in runners.values():
            fn(policy, ids, mask, stop_ids, args.max_new_tokens, 10_000)
        for rep in range(args.repeats):
            for k in runners if rep % 2 == 0 else list(runners)[::-1]:
                res[k].append(runners[k](policy, ids, mask, stop_ids, args.max_new_tokens, rep))
        med = {k: {"seconds": statistics.median(r[0] for r in v),
                   "tokens": statistics.median(r[1] for r in v),
                   "tokens_per_s": statistics.median(r[1] / r[0] for r in v)}
               for k, v in res.items()}  # fmt: skip
        flops = rollout_flops(shape, ids.size(0), prompt_len, med["ours"]["tokens"])
        achieved = flops / med["ours"]["seconds"] / 1e12
        rows.append({
            "model": name, "dtype": dtype, "batch": ids.size(0), "prompt_len_mean": prompt_len,
            "params": shape["params"], "ours": med["ours"], "generate": med["generate"],
            "ours_new_prompts": med["ours_new_prompts"],
            "ours_new_prompts_cudnn": med["ours_new_prompts_cudnn"],
            "tps_ratio": med["ours"]["tokens_per_s"] / med["generate"]["tokens_per_s"],
            "ours_tflops": achieved, "of_peak": achieved / peaks.get(dtype, float("nan")),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --- 3. DAPO steps ----------------------------------------------------------------------


def bench_steps(model_dir: Path, args) -> dict[str, Any]:
    from dapo_cli.policy import load_policy
    from dapo_cli.scale.distributed import SINGLE
    from dapo_cli.scale.trained_model import prepare_trained

    G, length = args.group, args.max_new_tokens
    config = bench_config(G, length, args.prompts, args.micro, "train.lr=1e-6")
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    dtype = "auto" if DEVICE == "cuda" else "bfloat16"  # auto: bf16 on a bf16-capable GPU
    policy = load_policy(str(model_dir), device=DEVICE, dtype=dtype)
    trained = prepare_trained(policy.model, SINGLE, gradient_checkpointing=True)
    loaded = peak_mib()
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    runner = DapoSteps(policy, trained, config, args.steps, "alternate")
    steps = []
    for _ in range(args.steps):
        m = runner.step()
        clock()
        steps.append({k: m[k] for k in ("step_time", "gen_time", "tokens_generated",
                                        "rows_skipped", "loss")})  # fmt: skip
        print(json.dumps(steps[-1]), flush=True)
    if args.profile:
        profile_generation(policy, runner.stream, config, runner.generator, Path(args.profile))
    moved = sum(int((p.detach() != before[n]).sum()) for n, p in policy.model.named_parameters())
    total = sum(p.numel() for p in policy.model.parameters())
    timed = steps[1:] or steps
    return {
        "policy_dtype": str(policy.model.dtype),
        "trained_dtype": str(next(trained.parameters()).dtype),
        "params": total, "group": G, "prompts": args.prompts, "length": length,
        "micro": args.micro, "steps_raw": steps,
        "step_s": statistics.median(s["step_time"] for s in timed),
        "gen_s": statistics.median(s["gen_time"] for s in timed),
        "tokens": statistics.median(s["tokens_generated"] for s in timed),
        "peak_mem_loaded_mib": loaded, "peak_mem_mib": peak_mib(),
        "rollout_weights_moved": moved / total,
    }  # fmt: skip


def profile_generation(policy, stream, config, generator, out: Path) -> None:
    """One ``collect_batch`` under ``torch.profiler``: where a training step's generation
    spends host and device time (which attention kernels ran, how often the host waited)."""
    from torch.profiler import ProfilerActivity, profile

    from dapo_cli.step import collect_batch

    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (DEVICE == "cuda")
    with profile(activities=activities) as prof:
        collect_batch(policy, stream, config, generator)
        clock()
    events = prof.key_averages()
    device_key = "device_time_total" if DEVICE == "cuda" else "cpu_time_total"
    out.write_text(
        "by host time (self)\n"
        + events.table(sort_by="self_cpu_time_total", row_limit=40)
        + f"\nby {device_key}\n"
        + events.table(sort_by=device_key, row_limit=40)
    )
    print(f"profile of one generation batch written to {out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    args = parse_args(argv)
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here", file=sys.stderr)
        return 1
    import transformers

    from dapo_cli.models import embedded_base
    from dapo_cli.policy import load_policy

    start = time.perf_counter()
    result: dict[str, Any] = {
        "env": {"gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE,
                "torch": torch.__version__,
                "transformers": transformers.__version__, "python": platform.python_version(),
                "bf16": DEVICE == "cuda" and torch.cuda.is_bf16_supported()},
        "settings": vars(args), "errors": {},
    }  # fmt: skip
    print(json.dumps(result["env"]), flush=True)
    workdir = Path(args.models_dir or tempfile.mkdtemp(prefix="dapo-bench-gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    peaks: dict[str, float] = {}
    if "matmul" not in args.skip and DEVICE == "cuda":
        peaks = matmul_peaks(repeats=3 if args.quick else 10)
        result["matmul_tflops"] = peaks
        print(json.dumps({"matmul_tflops": peaks}), flush=True)
    qwen = None
    if not {"rollout", "step"} <= set(args.skip):
        qwen = build_qwen05b(workdir / "qwen05b")
    if "rollout" not in args.skip:
        result["rollouts"] = []
        for name, path, dtype in (("tiny-10m", embedded_base("tiny-10m", workdir), "float32"),
                                  ("qwen2.5-0.5b-shape", qwen, "auto")):  # fmt: skip
            try:
                policy = load_policy(str(path), device=DEVICE, dtype=dtype)
                result["rollouts"] += bench_rollouts(name, policy, args, peaks)
                del policy
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
            except Exception:
                result["errors"][f"rollout {name}"] = traceback.format_exc()
                print(result["errors"][f"rollout {name}"], file=sys.stderr, flush=True)
    if "step" not in args.skip:
        try:
            result["dapo_step"] = bench_steps(qwen, args)
            print(json.dumps({k: v for k, v in result["dapo_step"].items() if k != "steps_raw"}))
        except Exception:
            result["errors"]["dapo step"] = traceback.format_exc()
            print(result["errors"]["dapo step"], file=sys.stderr, flush=True)
    result["wall_s"] = time.perf_counter() - start
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    print_summary(result)
    return 1 if result["errors"] else 0


def print_summary(result: dict[str, Any]) -> None:
    env = result["env"]
    print(f"\n{env['gpu']}, torch {env['torch']}, transformers {env['transformers']}")
    if "matmul_tflops" in result:
        mm = result["matmul_tflops"]
        print("matmul peak: " + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in mm.items()))
    if result.get("rollouts"):
        print("| model | dtype | rows | ours tok/s | generate tok/s | ours/generate | of peak "
              "| ours, new prompts each call, tok/s | the same, cuDNN allowed |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for r in result["rollouts"]:
            print(f"| {r['model']} | {r['dtype']} | {r['batch']} | "
                  f"{r['ours']['tokens_per_s']:.0f} | {r['generate']['tokens_per_s']:.0f} | "
                  f"{r['tps_ratio']:.2f} | {100 * r['of_peak']:.2f}% | "
                  f"{r['ours_new_prompts']['tokens_per_s']:.0f} | "
                  f"{r['ours_new_prompts_cudnn']['tokens_per_s']:.0f} |")  # fmt: skip
    if "dapo_step" in result:
        s = result["dapo_step"]
        print(f"DAPO step, {s['params'] / 1e6:.0f}M params, policy {s['policy_dtype']}, master "
              f"{s['trained_dtype']}: {s['prompts']} prompts x G {s['group']}, {s['length']} "
              f"tokens, micro {s['micro']}: {s['step_s']:.2f} s/step (generation "
              f"{s['gen_s']:.2f} s), peak GPU memory {s['peak_mem_mib']:.0f} MiB "
              f"(loaded {s['peak_mem_loaded_mib']:.0f}); rollout weights moved "
              f"{100 * s['rollout_weights_moved']:.1f}%")  # fmt: skip
    print(f"wall {result['wall_s']:.0f} s; errors: {list(result['errors']) or 'none'}")


if __name__ == "__main__":
    raise SystemExit(main())
