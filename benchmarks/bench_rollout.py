"""Rollout throughput benchmark: dapo_cli's sampler against Hugging Face ``generate``.

Measures, on this machine:

1. the fp32 matmul peak (median GFLOP/s of ``torch.mm`` on square matrices, default threads);
2. rollout throughput on the embedded tiny models: ``dapo_cli.rollout.sample`` ("ours")
   against ``model.generate`` on the same model, prompts, batch and ``max_new_tokens``,
   both under ``torch.inference_mode()``, alternated, one warm-up each, median of the
   repeats; once with the policy's stop ids ("eos") and once with EOS disabled ("no-eos":
   an id outside the vocabulary, so every row generates exactly ``max_new_tokens``);
3. the achieved FLOP/s of our rollout (model matmuls + attention, rough) against the peak;
4. the peak RSS of the process.

Run from the repository root::

    python -m benchmarks.bench_rollout            # default settings (a few minutes on 2 cores)
    python -m benchmarks.bench_rollout --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    count_generate_tokens,
    matmul_peak,
    model_shape,
    print_peak,
    prompts_for,
    rollout_flops,
    rss_mib,
)
from dapo_cli.models import embedded_base
from dapo_cli.policy import Policy, load_policy
from dapo_cli.rollout import sample


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["tiny-1m", "tiny-10m"],
        help="embedded model names (random init), model folders or .gguf files (e.g. a "
        "warm-started or pretrained model, whose responses end at EOS)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        help="compute dtype of both: float32, bfloat16 or auto (dapo_cli's choice for this "
        "machine); 'of peak' is against torch.mm's peak in it",
    )
    p.add_argument("--prompts", type=int, default=16, help="distinct prompts per batch")
    p.add_argument("--group", "-G", type=int, default=8, help="samples per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method (median)")
    p.add_argument("--matmul-sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--matmul-repeats", type=int, default=7)
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["eos", "no-eos"],
        default=["eos", "no-eos"],
        help="eos: stop at the policy's stop ids; no-eos: always max_new_tokens",
    )
    p.add_argument(
        "--models-dir",
        default=None,
        help="where the embedded models are built/reused (default: $DAPO_HOME, else a "
        "folder in the system temp dir, so the repository stays clean)",
    )
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: small batch, few repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = ["tiny-1m"]
        args.prompts, args.group, args.max_new_tokens = 4, 2, 16
        args.repeats, args.matmul_sizes, args.matmul_repeats = 2, [512], 3
    return args


# --- 1. matmul peak --------------------------------------------------------------------


# --- 2. rollouts -----------------------------------------------------------------------


def run_ours(policy: Policy, ids, mask, stop_ids, max_new, seed) -> tuple[float, int, int]:
    with torch.inference_mode():
        t0 = time.perf_counter()
        r = sample(
            policy.model,
            ids,
            mask,
            max_new_tokens=max_new,
            eos_token_ids=stop_ids,
            pad_token_id=policy.pad_id,
            temperature=1.0,
            top_p=1.0,
            generator=torch.Generator().manual_seed(seed),
        )
        dt = time.perf_counter() - t0
    return dt, int(r.response_mask.sum()), int(r.response_ids.size(1))


def run_generate(policy: Policy, ids, mask, stop_ids, max_new, seed) -> tuple[float, int, int]:
    torch.manual_seed(seed)  # generate samples from the global RNG
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = policy.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new,
            eos_token_id=stop_ids,
            pad_token_id=policy.pad_id,
            output_scores=False,
        )
        dt = time.perf_counter() - t0
    new_ids = out[:, ids.size(1) :]
    return dt, count_generate_tokens(new_ids, stop_ids), int(new_ids.size(1))


def bench_size(size: str, args, prompts: list[str], models_dir: Path, peaks: dict) -> list[dict]:
    folder = Path(size).exists()  # a model folder or .gguf file
    path = Path(size) if folder else embedded_base(size, cache_dir=models_dir)
    policy = load_policy(str(path), device="cpu", dtype=args.dtype)
    peak = peaks[str(policy.model.dtype).removeprefix("torch.")]
    shape = model_shape(policy.model)
    ids, mask = policy.encode(prompts, repeat=args.group)
    prompt_len = int(mask.sum()) / ids.size(0)  # mean real prompt tokens per row
    rows = []
    for mode in args.modes:
        # an id outside the vocabulary can never be sampled: every row runs max_new_tokens
        stop_ids = policy.stop_ids if mode == "eos" else [shape["vocab"] + 7]
        runners = {"ours": run_ours, "generate": run_generate}
        results: dict[str, list[tuple[float, int, int]]] = {k: [] for k in runners}
        for fn in runners.values():  # one warm-up each
            fn(policy, ids, mask, stop_ids, args.max_new_tokens, 10_000)
        for rep in range(args.repeats):
            order = list(runners) if rep % 2 == 0 else list(runners)[::-1]
            for name in order:
                results[name].append(
                    runners[name](policy, ids, mask, stop_ids, args.max_new_tokens, rep)
                )
        med = {}
        for name, res in results.items():
            secs = statistics.median(r[0] for r in res)
            toks = statistics.median(r[1] for r in res)
            tps = statistics.median(r[1] / r[0] for r in res)
            med[name] = {
                "seconds": secs,
                "tokens": toks,
                "tokens_per_s": tps,
                "steps": statistics.median(r[2] for r in res),
                "seconds_all": [r[0] for r in res],
                "tokens_all": [r[1] for r in res],
            }
        flops = rollout_flops(shape, ids.size(0), prompt_len, med["ours"]["tokens"])
        achieved = flops / med["ours"]["seconds"] / 1e9
        rows.append(
            {
                "model": Path(size).name if folder else size,
                "dtype": str(policy.model.dtype).removeprefix("torch."),
                "mode": mode,
                "batch": ids.size(0),
                "prompt_len_padded": ids.size(1),
                "prompt_len_mean": prompt_len,
                **{f"{k}_params": v for k, v in shape.items() if "params" in k},
                "ours": med["ours"],
                "generate": med["generate"],
                "time_ratio_ours_over_generate": med["ours"]["seconds"]
                / med["generate"]["seconds"],
                "tps_ratio_ours_over_generate": med["ours"]["tokens_per_s"]
                / med["generate"]["tokens_per_s"],
                "ours_gflop": flops / 1e9,
                "ours_gflops": achieved,
                "ours_fraction_of_peak": achieved / peak,
            }
        )
    del policy
    return rows


# --- output ----------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    print_peak(console, result)
    s = result["settings"]
    console.print(
        f"batch {s['prompts']} prompts × G={s['group']} = {s['prompts'] * s['group']} rows, "
        f"max_new_tokens={s['max_new_tokens']}, {s['repeats']} repeats (median), "
        f"temperature 1.0, top_p 1.0, {s.get('dtype', 'float32')}, inference_mode"
    )
    table = Table(title="Rollout: dapo_cli.rollout.sample (ours) vs HF generate")
    for col in (
        "model",
        "mode",
        "ours s",
        "gen s",
        "ours tok",
        "gen tok",
        "ours tok/s",
        "gen tok/s",
        "time ours/gen",
        "tok/s ours/gen",
        "ours GFLOP/s",
        "of peak",
    ):
        table.add_column(col, justify="left" if col in ("model", "mode") else "right")
    for r in result["rollouts"]:
        o, g = r["ours"], r["generate"]
        table.add_row(
            r["model"],
            r["mode"],
            f"{o['seconds']:.3f}",
            f"{g['seconds']:.3f}",
            f"{o['tokens']:.0f}",
            f"{g['tokens']:.0f}",
            f"{o['tokens_per_s']:.0f}",
            f"{g['tokens_per_s']:.0f}",
            f"{r['time_ratio_ours_over_generate']:.2f}",
            f"{r['tps_ratio_ours_over_generate']:.2f}",
            f"{r['ours_gflops']:.2f}",
            f"{100 * r['ours_fraction_of_peak']:.1f}%",
        )
    console.print(table)
    console.print(
        f"peak RSS {result['peak_rss_mib']:.0f} MiB; total wall time {result['wall_s']:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    models_dir = Path(
        args.models_dir
        or os.environ.get("DAPO_HOME")
        or Path(tempfile.gettempdir()) / "dapo_cli-bench-models"
    )
    mm = matmul_peak(args.matmul_sizes, args.matmul_repeats)
    peaks = {"matmul": mm}
    if args.dtype != "float32":
        peaks["matmul_bf16"] = matmul_peak(args.matmul_sizes, args.matmul_repeats, torch.bfloat16)
    by_dtype = {p["dtype"]: p["peak_gflops"] for p in peaks.values()}
    prompts = prompts_for(args.prompts)
    rollouts = []
    for size in args.sizes:
        rollouts += bench_size(size, args, prompts, models_dir, by_dtype)
    import transformers

    result = {
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "settings": {
            "sizes": args.sizes,
            "prompts": args.prompts,
            "group": args.group,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "modes": args.modes,
            "dtype": args.dtype,
            "quick": args.quick,
        },
        **peaks,
        "rollouts": rollouts,
        "peak_rss_mib": rss_mib(),
        "wall_s": time.perf_counter() - start,
    }
    print_table(result)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
