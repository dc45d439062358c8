"""The DAPO training loop: sample → score → filter → advantages → update → log → checkpoint.

One rollout step:
1. ``collect_batch`` draws ``gen_batch_size`` prompts, samples G responses each in one
   batched generation (``rollout.sample``), scores them (``rewards.score``), adds the soft
   overlong penalty, and — with dynamic sampling — keeps only groups that are neither
   all-correct nor all-wrong, generating again until ``train_batch_size`` prompts carry
   signal (or ``max_num_gen_batches`` is reached).
2. ``update`` makes ``ppo_epochs`` passes over mini-batches of that batch; each mini-batch is
   one optimiser step, accumulated over micro-batches with the token-mean denominator of the
   whole mini-batch. The "old" log-probs are the trained module's own numbers, so that the
   ratio of the first update is exactly 1 (see ``old_logprobs_source``).
The maths lives in ``algorithm.py``; this module only moves tensors between the pieces.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dapo_cli import algorithm as A
from dapo_cli.config import Config
from dapo_cli.errors import DapoError
from dapo_cli.models import checkpointing_enabled
from dapo_cli.policy import Policy
from dapo_cli.rewards import score_batch
from dapo_cli.rollout import (
    Rollout,
    Sampler,
    Sampling,
    TorchSampler,
    recompute_logprobs,
    sequence_logprobs,
)
from dapo_cli.scale.distributed import SINGLE, Dist
from dapo_cli.scale.trained_model import compute_context, full_value, is_sharded, sync_weights
from dapo_cli.tasks.answers import has_final_answer
from dapo_cli.user_reward import call_reward, load_reward


class PromptStream:
    """Training samples in a seeded order, reshuffled every epoch. Its position is saved in
    checkpoints, so a resumed run sees the same prompts in the same order."""

    def __init__(self, samples: list[dict[str, Any]], seed: int):
        if not samples:
            raise DapoError("no training samples (check the data path, split and task types)")
        self.samples, self.seed = samples, seed
        self.epoch, self.index = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples)))
        random.Random(f"dapo-data-order:{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            out.append(self.samples[self._order[self.index]])
            self.index += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._shuffled(self.epoch)


@dataclass
class Batch:
    """Rollouts with signal, ready for the update. Rows are grouped G per prompt."""

    rollout: Rollout
    advantages: torch.Tensor  # (B,)
    loss_mask: torch.Tensor  # (B, T) response mask, minus truncated samples when filtering
    stats: dict[str, float] = field(default_factory=dict)
    # the update takes its own detached log-probs as the old ones (one_update_per_batch);
    # rollout.logprobs (the sampler's) are then only compared with them
    old_from_update: bool = False


def one_update_per_batch(config: Config) -> bool:
    """One optimiser step per rollout batch (μ = 1, one mini-batch): the policy that sampled
    is still the policy when the update computes its log-probs, so those (detached) are the
    old log-probs, with no pass of their own (TRL does the same for μ = 1)."""
    t = config.train
    return t.ppo_epochs == 1 and t.mini_batch_size >= t.train_batch_size


TORCH_SAMPLER = TorchSampler()


def old_logprobs_source(config: Config, policy: Policy, sampler: Sampler = TORCH_SAMPLER) -> str:
    """Where the update's old log-probs come from, so that the ratio of its first step is 1:
    ``update`` (one optimiser step per batch: its own detached pass, any sampler, as TRL);
    ``recompute`` (several steps, and the sampler's numbers are not the update's: another
    engine, or a bf16/fp16 policy whose update runs fp32 master weights under autocast; one
    pass of the trained module before the first step, as verl); ``sampler`` (several steps,
    our fp32 sampler: its log-probs equal the update's to ~1e-6)."""
    if one_update_per_batch(config):
        return "update"
    if not sampler.exact_logprobs or policy.model.dtype != torch.float32:
        return "recompute"
    return "sampler"


def score_responses(
    policy: Policy, rollout: Rollout, samples: list[dict], group_size: int, config: Config
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (B,) = the verifiers' (or ``reward.function``'s) reward (+ soft overlong
    penalty) and correctness (B,) bool."""
    texts = rollout.response_texts(policy.tokenizer)
    if config.reward.function:
        rewards, right = call_reward(
            load_reward(config.reward.function), samples, texts, group_size
        )
    else:
        scores = score_batch(samples, texts, group_size, config.reward.scoring())
        rewards, right = [s.reward for s in scores], [s.correct for s in scores]
    reward = torch.tensor(rewards, dtype=torch.float32)  # (B,)
    correct = torch.tensor(right, dtype=torch.bool)  # (B,)
    a = config.algorithm
    if a.soft_overlong_punishment:
        lengths = rollout.lengths.cpu()
        reward = reward + A.soft_overlong_penalty(
            lengths, config.rollout.max_new_tokens, a.overlong_cache_len
        )
    return reward, correct


def collect_batch(  # the generation loop of one step, top to bottom (its metrics: _batch_stats)
    policy: Policy,
    stream: PromptStream,
    config: Config,
    generator: torch.Generator,
    dist: Dist = SINGLE,
    sampler: Sampler = TORCH_SAMPLER,
) -> Batch:
    """Generate and filter until ``train_batch_size`` prompts carry signal (dynamic sampling),
    or take one batch of ``train_batch_size`` prompts as they come (dynamic sampling off).
    With several processes each samples and scores its slice of every generation batch, and
    the slices are gathered, so every rank continues with the same global batch."""
    t, r, a = config.train, config.rollout, config.algorithm
    G = r.group_size
    want = t.train_batch_size
    per_batch = t.gen_batch_size if a.dynamic_sampling else want
    kept: list[tuple[Rollout, torch.Tensor]] = []
    n_kept = n_groups = n_batches = n_informative = 0
    seen = {"reward": [], "correct": [], "length": [], "truncated": [], "entropy": []}
    last = None  # the latest generation batch's rollout
    while n_kept < want:
        capped = a.dynamic_sampling and 0 < t.max_num_gen_batches <= n_batches
        if capped and _at_gen_cap(
            t.on_gen_cap, n_kept, want, n_batches, seen["correct"], G,
            lambda last=last: _no_signal_diagnosis(policy, last),  # capped: a batch ran
        ):  # fmt: skip
            break  # train on the partial batch
        samples = stream.take(per_batch)
        rollout, reward, correct = _sample_and_score(
            policy, samples[dist.shard(len(samples))], config, generator, sampler
        )
        if dist.active:
            rollout, reward, correct = _gather_scored(dist, policy, rollout, reward, correct)
        n_batches, last = n_batches + 1, rollout
        seen["reward"].append(reward)
        seen["correct"].append(correct)
        seen["length"].append(rollout.lengths.cpu())
        seen["truncated"].append(rollout.truncated.cpu())
        seen["entropy"].append(rollout.entropy_sum)
        keep = (
            A.keep_informative_groups(correct, G)
            if a.dynamic_sampling
            else torch.ones(len(samples), dtype=torch.bool)
        )  # (N,)
        n_groups += len(samples)
        n_informative += int(keep.sum())
        adv = A.group_advantages(reward, G, a.adv_eps)  # (B,)
        groups = keep.nonzero().flatten()[: want - n_kept].tolist()
        if groups:
            rows = [g * G + j for g in groups for j in range(G)]
            kept.append((rollout.select(rows), adv[rows]))
            n_kept += len(groups)

    rollout = Rollout.concat([k[0] for k in kept], policy.pad_id)
    advantages = torch.cat([k[1] for k in kept]).to(policy.device)
    loss_mask = rollout.response_mask.float()
    if a.overlong_filtering:
        loss_mask = loss_mask * A.overlong_mask(rollout.truncated)[:, None]
    counts = (n_informative, n_groups, n_batches, n_kept, want)
    stats = _batch_stats(seen, G, a.dynamic_sampling, *counts)
    old_from_update = old_logprobs_source(config, policy, sampler) == "update"
    return Batch(rollout, advantages, loss_mask, stats, old_from_update)


def _batch_stats(
    seen: dict[str, list], G: int, dynamic: bool, n_informative: int, n_groups: int,
    n_batches: int, n_kept: int, want: int,
) -> dict[str, float]:  # fmt: skip
    """The rollout's metrics, over every response generated for this step (kept or not)."""
    all_correct = torch.cat(seen["correct"]).float()
    lengths = torch.cat(seen["length"]).float()
    groups_correct = all_correct.view(-1, G).mean(1)
    stats = {
        "reward_mean": float(torch.cat(seen["reward"]).mean()),
        "accuracy": float(all_correct.mean()),
        "response_length_mean": float(lengths.mean()),
        "response_length_max": float(lengths.max()),
        "truncation_rate": float(torch.cat(seen["truncated"]).float().mean()),
        "groups_all_correct": float((groups_correct == 1).float().mean()),
        # groups dropped for lacking signal (not those left over once the batch was full)
        "groups_filtered": 1.0 - n_informative / max(n_groups, 1) if dynamic else 0.0,
        "gen_batches": float(n_batches),
        "prompts_trained": float(n_kept),
        "tokens_generated": float(lengths.sum()),
        "responses_generated": float(len(lengths)),  # every generation batch's, G per prompt
    }
    if all(e is not None for e in seen["entropy"]):  # else the update measures it
        # over every generated token (response mask, truncated responses included)
        entropy_sum = float(sum(float(e.sum()) for e in seen["entropy"]))
        stats["entropy"] = entropy_sum / max(float(lengths.sum()), 1.0)
    stats["batch_fill"] = n_kept / want  # < 1: a partial batch (train.on_gen_cap=continue)
    return stats


class Converged(Exception):  # noqa: N818  (an outcome, not an error)
    """Dynamic sampling cannot fill a batch because the model answers (nearly) every group
    the same way, mostly correctly: it has learned this data. The run stops, as a success."""


def _at_gen_cap(
    on_cap: str, n_kept: int, want: int, n_batches: int, correct, G: int, diagnosis=str
) -> bool:
    """Dynamic sampling reached ``train.max_num_gen_batches`` with ``n_kept`` of ``want``
    prompts with signal. True: train on the partial batch. Else raises: ``Converged`` when
    the groups seen were mostly all-correct (on_cap continue, with nothing kept, or stop),
    or a DapoError saying what to change (on_cap error, or mostly all-wrong groups), with
    ``diagnosis()`` (what the last responses looked like)."""
    groups = torch.cat(correct).float().view(-1, G).mean(1)  # (N,) each group's accuracy
    all_correct, all_wrong = (
        float((groups == 1).float().mean()),
        float((groups == 0).float().mean()),
    )
    found = (
        f"dynamic sampling found {n_kept} of {want} prompts with signal (neither all-correct "
        f"nor all-wrong) in {n_batches} generation batches (train.max_num_gen_batches); "
        f"{all_correct:.0%} of the groups were all-correct, {all_wrong:.0%} all-wrong"
    )
    if on_cap == "continue" and n_kept > 0:
        return True
    if on_cap != "error" and all_correct >= all_wrong:
        raise Converged(f"converged: {found}: the model has learned this data")
    partial = ", or --set train.on_gen_cap=continue to train on partial batches"
    raise DapoError(
        f"{found}{diagnosis()}; use data nearer the model's level or raise the cap (--set "
        f"train.max_num_gen_batches=0 for no cap){partial if on_cap == 'error' else ''}"
    )


def _no_signal_diagnosis(policy: Policy, rollout: Rollout) -> str:
    """What the last generation batch looked like: how many responses gave a final answer
    the verifiers read, one response, and what usually fixes a batch with no signal."""
    texts = rollout.response_texts(policy.tokenizer)
    parsed = sum(has_final_answer(text) for text in texts)
    example = " ".join(texts[0].split())[:80] if texts else ""
    return (
        f"; {parsed} of {len(texts)} responses of the last batch had an 'Answer:' line or a "
        f"\\boxed{{}} (e.g. {example!r}); fixes: a system prompt asking for 'Answer: ...' "
        "(--system), reward.last_number=true (math: a response's last number is its answer), "
        "a warm start (dapo sft), a reward that reads this model's answers (--reward)"
    )


def _sample_and_score(
    policy: Policy, samples: list[dict], config: Config, generator, sampler: Sampler
) -> tuple[Rollout | None, torch.Tensor, torch.Tensor]:
    """G responses per prompt in one batched generation, with rewards and correctness."""
    if not samples:  # a rank whose slice of a small generation batch is empty
        return None, torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    r = config.rollout
    sampling = Sampling(r.max_new_tokens, r.temperature, r.top_p, r.top_k)
    prompts = policy.prompts_ids([s["prompt"] for s in samples])
    rollout = sampler.sample(policy, prompts, r.group_size, sampling, generator)
    reward, correct = score_responses(policy, rollout, samples, r.group_size, config)
    return rollout, reward, correct


def _max_gap(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """The largest |a − b| where ``mask`` is set (0 for no element)."""
    gap = (a - b).abs() * mask
    return float(gap.max()) if gap.numel() else 0.0


def _gather_scored(dist: Dist, policy: Policy, rollout, reward, correct):
    """Every rank's scored slice, concatenated in rank order (= prompt order)."""
    mine = None if rollout is None else (rollout.to("cpu"), reward, correct)
    parts = [p for p in dist.gather(mine) if p is not None]
    rollout = Rollout.concat([p[0] for p in parts], policy.pad_id).to(policy.device)
    return rollout, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


def update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    config: Config,
    rng: random.Random,
    reference=None,
    dist: Dist = SINGLE,
    model=None,
) -> dict[str, float]:
    """``ppo_epochs`` passes over mini-batches; one optimiser step per mini-batch, with
    micro-batch gradient accumulation exact for token-mean (global denominator). With several
    processes each rank back-propagates its share of every mini-batch and the gradients are
    summed across ranks before the step, so every rank takes the single-process step.
    ``model`` is the module trained (default ``policy.model``): an fp32 copy of a bf16 policy
    (run under autocast) or, under FSDP, a sharded copy whose gradients FSDP itself sums;
    either way its weights are copied into ``policy.model`` (the rollout model) at the end.
    Rows that cannot change the step (advantage 0, or every token masked) are not run, so
    the per-token statistics (clip fractions, approx KL) are over the loss tokens of the rows
    run; ``loss`` is each mini-batch's loss (over all its tokens, as optimised), averaged
    over the steps taken; ``entropy`` comes from the sampler (``collect_batch``), else from
    this pass over the response tokens of the rows run."""
    u = _Update.start(policy, batch, config, reference, dist, model)
    params = [p for p in u.model.parameters() if p.requires_grad]
    for mini in _mini_batches(batch, config, rng, u):
        optimizer.zero_grad(set_to_none=True)
        finite, loss = _accumulate_gradients(u, mini)
        _apply_step(u, optimizer, params, finite, loss)
    if u.model is not policy.model and u.n_updates:
        sync_weights(u.model, policy.model)  # the next rollout samples from the new weights
    return _update_metrics(u, batch, config, dist)


@dataclass
class _Update:
    """One update's fixed choices and what it measures, summed over the passes it runs."""

    policy: Policy
    batch: Batch
    config: Config
    reference: Any
    dist: Dist
    model: Any  # the module trained (see update)
    compute: Any  # autocast when fp32 master weights train a bf16 policy
    sharded: bool
    skip_idle: bool  # rows with Â = 0 or no loss token are not run (see start)
    share_prompts: bool  # a prompt's rows in one micro-batch share one pass over the prompt
    measure_entropy: bool  # the sampler gave none (vLLM)
    sums: dict[str, float]  # Σ stat · tokens, over the rows run
    weight: float = 0.0  # Σ tokens of the rows run
    entropy_sum: float = 0.0
    entropy_tokens: float = 0.0
    loss_sum: float = 0.0  # Σ over the steps taken of this process's share of the loss
    n_updates: int = 0
    n_nonfinite: int = 0
    grad_norms: list[float] = field(default_factory=list)
    idle: int = 0  # rows not run
    sampler_gap: float = 0.0  # the sampler's log-probs against the update's, on the rows run

    @classmethod
    def start(cls, policy, batch, config, reference, dist, model) -> _Update:
        a = config.algorithm
        model = policy.model if model is None else model
        sharded = is_sharded(model)
        # With a KL term every row has a gradient; without, a row whose advantage is 0 (all
        # of a group alike, dynamic sampling off) or whose tokens are all masked
        # (overlong-filtered) adds exactly nothing, and skipping its pass changes no parameter.
        skip_idle = not (reference is not None and a.kl_coef > 0)
        stat_keys = ["clip_frac_low", "clip_frac_high", "approx_kl", "ratio_mean"]
        stat_keys += ["dual_clip_frac"] * (a.dual_clip is not None) + ["kl_ref"] * (not skip_idle)
        return cls(
            policy, batch, config, reference, dist, model,
            compute=compute_context(model, policy.model),
            sharded=sharded,
            skip_idle=skip_idle,
            # Not under FSDP (each pass is a collective) nor gradient checkpointing (whose
            # re-run of a layer would add its keys to the shared cache twice).
            share_prompts=config.rollout.group_size > 1
            and not sharded
            and not checkpointing_enabled(model),
            measure_entropy="entropy" not in batch.stats,
            sums=dict.fromkeys(stat_keys, 0.0),  # every key, even when no row is run (NaN)
        )  # fmt: skip


@dataclass
class _MiniBatch:
    rows: torch.Tensor  # (b,) this process's rows to run, in micro-batch order
    num_tokens: torch.Tensor  # loss tokens of the whole mini-batch, on every rank
    num_seqs: torch.Tensor  # rows with ≥ 1 loss token, of the whole mini-batch
    any_row: torch.Tensor  # (1,) a row for the empty passes that keep FSDP ranks in step


def _mini_batches(batch: Batch, config: Config, rng: random.Random, u: _Update):
    """``ppo_epochs`` shuffled passes over the batch's prompts, ``mini_batch_size`` prompts
    (all G rows of each) at a time; idle rows are dropped (counted in ``u.idle``)."""
    t, G = config.train, config.rollout.group_size
    n_prompts = batch.rollout.prompt_ids.size(0) // G
    for _ in range(t.ppo_epochs):
        order = list(range(n_prompts))
        rng.shuffle(order)
        for start in range(0, n_prompts, t.mini_batch_size):
            prompts = order[start : start + t.mini_batch_size]
            rows = torch.tensor([p * G + j for p in prompts for j in range(G)])
            mask_mb = batch.loss_mask[rows]  # (b, T)
            num_tokens = mask_mb.sum()
            num_seqs = (mask_mb.sum(-1) > 0).sum()
            any_row = rows[:1]
            if u.skip_idle:  # Â = 0 or no loss token: exactly 0 loss and gradient, so not run
                adv_mb = batch.advantages[rows].reshape(len(rows), -1)  # (b, 1) or (b, T)
                rows = rows[((mask_mb.sum(-1) > 0) & (adv_mb != 0).any(-1)).cpu()]
                u.idle += len(prompts) * G - len(rows)
            mine = rows[u.dist.shard(len(rows))]
            mine = _micro_batch_order(batch.rollout, mine, G if u.share_prompts else 0)
            yield _MiniBatch(mine, num_tokens, num_seqs, any_row)


def _accumulate_gradients(u: _Update, mini: _MiniBatch) -> tuple[bool, float]:
    """Forward and backward every micro-batch of this process's rows; returns (all finite,
    the mini-batch's loss share). FSDP's passes are collectives: every rank runs as many."""
    micro_size = u.config.train.micro_batch_size
    starts = list(range(0, len(mini.rows), micro_size))
    n_passes = u.dist.max_int(len(starts)) if u.sharded else len(starts)
    finite, mb_loss = True, 0.0
    for i in range(n_passes):
        if i >= len(starts):  # a pass that adds nothing, to keep the ranks in step
            sub = u.batch.rollout.select(mini.any_row)
            with u.compute:
                nothing = sequence_logprobs(u.model, sub, u.config.rollout.temperature)
            (nothing.sum() * 0.0).backward()
            continue
        loss = _micro_step(u, mini, mini.rows[starts[i] : starts[i] + micro_size])
        if not torch.isfinite(loss):
            finite = False
            if not u.sharded:
                break
            loss.backward()  # the other ranks wait for this pass; the step is dropped
            continue
        loss.backward()
        mb_loss += float(loss.detach())  # already over the whole mini-batch's tokens
    return finite, mb_loss


def _micro_step(u: _Update, mini: _MiniBatch, micro: torch.Tensor) -> torch.Tensor:
    """The loss of one micro-batch (rows ``micro``), over the mini-batch's token count, so
    the micro-batches' losses and gradients sum to the mini-batch's; its statistics are
    added to ``u``."""
    r, a, batch = u.config.rollout, u.config.algorithm, u.batch
    sub = batch.rollout.select(micro)
    mask = batch.loss_mask[micro][:, : sub.response_ids.size(1)].to(u.policy.device)
    groups = micro // r.group_size if u.share_prompts else None
    with u.compute:  # autocast when fp32 master weights train a bf16 policy
        if u.measure_entropy:
            logp, entropy = sequence_logprobs(
                u.model, sub, r.temperature, return_entropy=True, groups=groups
            )  # (b, T) each
        else:
            logp = sequence_logprobs(u.model, sub, r.temperature, groups=groups)  # (b, T)
            entropy = None
    old = sub.logprobs
    if batch.old_from_update:  # the policy has not moved since it sampled
        old = logp.detach()
        u.sampler_gap = max(u.sampler_gap, _max_gap(old, sub.logprobs, sub.response_mask))
    loss, st = A.policy_loss(
        logp, old, batch.advantages[micro], mask,
        eps_low=a.eps_low, eps_high=a.eps_high, agg=a.loss_agg, dual_clip=a.dual_clip,
        num_tokens=mini.num_tokens, num_seqs=mini.num_seqs,
    )  # fmt: skip
    if u.reference is not None and a.kl_coef > 0:
        with torch.no_grad():
            ref_logp = sequence_logprobs(u.reference, sub, r.temperature)
        penalty, st["kl_ref"] = A.kl_penalty(logp, ref_logp, mask, mini.num_tokens)
        loss = loss + a.kl_coef * penalty
    if torch.isfinite(loss):  # a non-finite pass is dropped with its step
        w = float(mask.sum())
        for k, v in st.items():
            u.sums[k] = u.sums.get(k, 0.0) + float(v) * w
        u.weight += w
        if entropy is not None:  # over every response token, filtered or not
            response = sub.response_mask.to(entropy.dtype)
            u.entropy_sum += float(A.masked_sum(entropy, response))
            u.entropy_tokens += float(response.sum())
    return loss


def _apply_step(u: _Update, optimizer, params: list, finite: bool, loss: float) -> None:
    """One optimiser step from the accumulated gradients: summed across processes, clipped,
    and dropped (counted) when any rank saw a non-finite loss or the norm is not finite."""
    finite = not u.dist.any(not finite)
    for p in params:  # a rank (or step) with no rows run: zero gradient, as before
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if finite:
        if not u.sharded:
            u.dist.sum_grads(params)
        t = u.config.train
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        norm = full_value(torch.nn.utils.clip_grad_norm_(params, clip))
        finite = bool(torch.isfinite(norm))
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        u.n_nonfinite += 1
        return
    optimizer.step()
    u.grad_norms.append(float(norm))
    u.loss_sum += loss
    u.n_updates += 1


def _update_metrics(u: _Update, batch: Batch, config: Config, dist: Dist) -> dict[str, float]:
    """Per-token statistics over every rank's rows run; the loss averaged over the steps."""
    sums, weight, loss_sum = u.sums, u.weight, u.loss_sum
    entropy_sum, entropy_tokens = u.entropy_sum, u.entropy_tokens
    if dist.active:  # each rank's share, summed
        parts = dist.gather((sums, weight, loss_sum, entropy_sum, entropy_tokens))
        keys = dict.fromkeys(k for p in parts for k in p[0])
        sums = {k: sum(p[0].get(k, 0.0) for p in parts) for k in keys}
        weight, loss_sum, entropy_sum, entropy_tokens = (
            sum(p[i] for p in parts) for i in range(1, 5)
        )
    out = {k: v / weight if weight else math.nan for k, v in sums.items()}
    # no token counted (e.g. every response truncated and filtered): the loss is exactly 0
    out["loss"] = loss_sum / u.n_updates if u.n_updates else (math.nan if u.n_nonfinite else 0.0)
    if u.measure_entropy:
        out["entropy"] = entropy_sum / entropy_tokens if entropy_tokens else math.nan
    out["grad_norm"] = sum(u.grad_norms) / len(u.grad_norms) if u.grad_norms else math.nan
    out["updates"] = float(u.n_updates)
    out["nonfinite_skipped"] = float(u.n_nonfinite)
    rows = config.train.ppo_epochs * batch.rollout.prompt_ids.size(0)
    out["rows_skipped"] = u.idle / max(rows, 1)
    if batch.old_from_update:
        out["rollout_logprob_diff_max"] = u.sampler_gap
    out["mean_token_prob"] = float(
        A.masked_mean(batch.rollout.logprobs.exp(), batch.rollout.response_mask)
    )
    return out


def _micro_batch_order(rollout: Rollout, rows: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rows`` in the order they are cut into micro-batches: by length, so that a micro-batch
    pads little (the sum of gradients is the same in any order); with ``group_size`` > 0 a
    prompt's rows stay together (for the shared prompt pass): groups by their longest
    response, rows by length within."""
    response = rollout.response_mask[rows].sum(-1).cpu()
    order = torch.argsort(response * 100_000 + rollout.prompt_mask[rows].sum(-1).cpu(), stable=True)
    if group_size and len(rows):
        group = rows.cpu() // group_size
        longest = torch.zeros(int(group.max()) + 1, dtype=response.dtype)
        longest = longest.scatter_reduce(0, group, response, "amax")
        order = order[torch.argsort(group[order], stable=True)]  # a prompt's rows together
        order = order[torch.argsort(longest[group[order]], stable=True)]
    return rows[order]


def lr_lambda(config: Config) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps`` rollout steps, then constant or cosine to 0."""
    t = config.train

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        if t.lr_schedule == "cosine":
            span = max(t.steps - t.warmup_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(step - t.warmup_steps, span) / span))
        return 1.0

    return factor


@dataclass
class StepState:
    """What one DAPO step reads and advances: the policy that samples, the module the
    optimiser trains (None: the policy's own model; see ``update``), the optimiser and its
    schedule, the prompt stream, the sampling generator and the mini-batch shuffle, the KL
    reference (or None), the processes, and where the responses come from."""

    policy: Policy
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stream: PromptStream
    generator: torch.Generator
    rng: random.Random
    reference: Any = None
    dist: Dist = SINGLE
    model: Any = None
    sampler: Sampler = TORCH_SAMPLER


def dapo_step(state: StepState, config: Config) -> dict[str, float]:
    """One full DAPO step; returns its metrics: ``collect_batch`` (sample → score → gather
    → filter → advantages), the old log-probs when they must be recomputed, ``update``, then
    the new weights to a sampler that keeps its own copy, and the schedule's step."""
    s = state
    policy, sampler, model = s.policy, s.sampler, s.model
    start = time.perf_counter()
    batch = collect_batch(policy, s.stream, config, s.generator, s.dist, sampler)
    gen_time = time.perf_counter() - start
    if old_logprobs_source(config, policy, sampler) == "recompute":
        trained = policy.model if model is None else model
        sampled = batch.rollout.logprobs
        batch.rollout.logprobs = recompute_logprobs(
            trained, batch.rollout, config.rollout.temperature, config.train.micro_batch_size,
            compute_context(trained, policy.model),
        )  # fmt: skip
        gap = _max_gap(batch.rollout.logprobs, sampled, batch.rollout.response_mask)
        batch.stats["rollout_logprob_diff_max"] = gap
    update_metrics = update(policy, s.optimizer, batch, config, s.rng, s.reference, s.dist, model)
    if sampler.own_weights and update_metrics["updates"]:
        sync_start = time.perf_counter()
        sampler.load_weights(policy.model)  # the next rollout samples from the new weights
        update_metrics["weight_sync_time"] = time.perf_counter() - sync_start
    metrics = {**batch.stats, **update_metrics}
    metrics["lr"] = s.optimizer.param_groups[0]["lr"]
    s.scheduler.step()
    step_time = time.perf_counter() - start
    metrics["step_time"] = step_time
    metrics["gen_time"] = gen_time
    metrics["tokens_per_s"] = metrics["tokens_generated"] / max(step_time, 1e-9)
    return metrics
