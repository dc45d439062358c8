"""Supervised warm start: teach a model the answer format (prompt → reference answer, loss on
the answer tokens only). A randomly initialised model gets zero reward and RL has nothing
to work with, so the embedded default is warm-started this way before DAPO.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from dapo_cli.config import SftSettings
from dapo_cli.paths import resolve_db_path
from dapo_cli.policy import Policy, load_policy
from dapo_cli.rollout import position_ids_from_mask
from dapo_cli.runlog import RunLog, log_path
from dapo_cli.scale.checkpoint import save_checkpoint
from dapo_cli.scale.distributed import SINGLE
from dapo_cli.scale.trained_model import compute_context, prepare_trained, sync_weights
from dapo_cli.store import Store
from dapo_cli.tasks import TASKS


def reference_completion(sample: dict[str, Any]) -> str:
    """The reference answer written as the model should write it."""
    task = TASKS.get(sample["task_type"])
    return task.format_reference(sample) if task else f"Answer: {sample['answer']}"


def encode_examples(
    policy: Policy, samples: list[dict[str, Any]]
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + EOS) per sample, tokenised once."""
    tok = policy.tokenizer
    eos = policy.stop_ids[0]
    out = []
    for s in samples:
        p = tok(policy.format_prompt(s["prompt"]), add_special_tokens=False)["input_ids"]
        t = tok(reference_completion(s), add_special_tokens=False)["input_ids"] + [eos]
        out.append((p, t))
    return out


def _collate(pairs, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, L), mask (B, L) and labels (B, L) with -100 outside the target."""
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for i, (p, t) in enumerate(pairs):
        n = len(p) + len(t)
        ids[i, :n] = torch.tensor(p + t)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(t)
    return ids.to(device), mask.to(device), labels.to(device)


def supervised_loss(model, ids, mask, labels) -> torch.Tensor:
    """Token-mean cross-entropy of the target tokens."""
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
    ).logits  # (B, L, V)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )


def supervised_warm_start(  # the loop of one SFT run: schedule, batches, steps, summary
    policy: Policy,
    samples: list[dict[str, Any]],
    *,
    steps: int = SftSettings.steps,
    batch_size: int = SftSettings.batch_size,
    lr: float = SftSettings.lr,
    warmup: int = 20,
    seed: int = SftSettings.seed,
    max_seconds: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train ``policy.model`` on prompt → reference answer for ``steps`` steps (or until
    ``max_seconds``), AdamW with linear warm-up then cosine decay. Returns a summary."""
    if not samples:
        raise ValueError("no samples to warm-start on")
    model = prepare_trained(policy.model, SINGLE)  # fp32 master weights of a bf16 policy
    compute = compute_context(model, policy.model)  # autocast to the policy's dtype, if any
    model.train()
    examples = encode_examples(policy, samples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = random.Random(f"dapo-sft:{seed}")
    order: list[int] = []
    start = time.perf_counter()
    losses: list[float] = []
    step = 0
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        chosen, order = order[:batch_size], order[batch_size:]
        ids, mask, labels = _collate([examples[i] for i in chosen], policy.pad_id, policy.device)
        with compute:
            loss = supervised_loss(model, ids, mask, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    model.eval()
    if model is not policy.model:
        sync_weights(model, policy.model)
    tail = losses[-20:]
    return {
        "steps": float(step),
        "loss_final": sum(tail) / len(tail),
        "seconds": time.perf_counter() - start,
    }


def run_sft(
    samples: list[dict[str, Any]],
    model: str | None,
    output: str | os.PathLike,
    settings: SftSettings,
    *,
    db_path: str | os.PathLike | None = None,
    data: str = "",
    on_step: Callable[[int, float], None] | None = None,
    on_message: Callable[[str], None] = lambda text: None,
) -> dict[str, float]:
    """``dapo sft`` as one call: ``model`` (None: the embedded tiny model) trained on
    ``samples`` as a recorded run (the store's ``sft`` run with its loss every 10 steps, and
    a plain-text log beside the store), then saved to ``output``. Returns the summary."""
    settings.check()
    torch.manual_seed(settings.seed)
    policy = load_policy(model, dtype=settings.dtype)
    policy.system = settings.system
    policy.template = settings.template
    store = Store(resolve_db_path(db_path))
    recorded = {**asdict(settings), "data": data}
    run_id = store.start_run("sft", recorded, model or "embedded")
    log = RunLog()
    on_message(f"log: {log.open(log_path(store.path, 'sft', run_id))}")
    log.line(f"sft of {model or 'embedded'} on {len(samples)} samples: {recorded}")

    def step_done(step: int, loss: float) -> None:
        if on_step is not None:
            on_step(step, loss)
        if step % 10 == 0 or step == settings.steps:
            store.log_metrics(run_id, step, {"loss": loss})
            log.line(f"sft step {step}/{settings.steps} loss={loss:.6g}")

    try:
        summary = supervised_warm_start(
            policy, samples, steps=settings.steps, batch_size=settings.batch_size,
            lr=settings.lr, seed=settings.seed, on_step=step_done,
        )  # fmt: skip
    except BaseException as exc:
        store.finish_run(run_id, "failed")
        log.line(f"failed: {type(exc).__name__}: {exc}")
        log.close()
        raise
    save_checkpoint(output, policy.model, policy.tokenizer)
    store.finish_run(run_id, "completed")
    log.line(
        f"sft: loss {summary['loss_final']:.3f} after {int(summary['steps'])} steps "
        f"({summary['seconds']:.0f} s); saved to {output}"
    )
    log.close()
    return summary
