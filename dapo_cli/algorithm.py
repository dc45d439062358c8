"""The DAPO maths as pure functions of tensors: no model, no I/O, no config object.

Read it beside Yu et al. 2025, "DAPO" (arXiv 2503.14476); each function names its equation.
Shapes: N prompts, G samples per prompt, B = N·G samples, T response tokens, V vocabulary.
A response ``mask`` is 1 for response tokens that count and 0 for padding (or for a whole
truncated sample, see :func:`overlong_mask`); masked tokens never contribute, whatever values
the other tensors hold there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-mean")


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·mask (over ``dim``, or everything). ``torch.where`` rather than a bare product, so
    that inf/NaN sitting in masked positions (e.g. padding log-probs) cannot leak in."""
    x = torch.where(mask > 0, x, torch.zeros_like(x)) * mask
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·mask / Σ mask over ``dim`` (or everything); 0 where the mask is empty (never NaN)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)  # token counts are whole numbers


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """Group-relative advantage, DAPO Eq. 9 (from GRPO): Â_i = (R_i − mean_j R_j) / (std_j R_j + ε).

    ``rewards``: (N·G,), the G samples of each prompt consecutive. Returns (N·G,) float.
    The std is the *population* std (``unbiased=False``), as the paper's std_j R_j reads; so
    rewards [1, −1, −1, 1] give exactly ±1/(1 + ε). (verl and TRL use torch.std, unbiased,
    which is larger by √(G/(G−1)) and shrinks every advantage by that factor.)
    A group whose rewards are all equal (any group when G = 1) carries no signal: its
    advantages are exactly 0, never NaN, and never the rounding noise of (R − mean)/ε.
    """
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().reshape(-1, group_size)  # (N, G)
    mean = r.mean(dim=1, keepdim=True)  # (N, 1)
    std = r.std(dim=1, unbiased=False, keepdim=True)  # (N, 1)
    adv = (r - mean) / (std + eps)  # (N, G)
    flat = (r == r[:, :1]).all(dim=1, keepdim=True)  # (N, 1) no signal in this group
    return torch.where(flat, torch.zeros_like(adv), adv).reshape(rewards.shape)  # (N·G,)


def keep_informative_groups(correct: Tensor, group_size: int) -> Tensor:
    """Dynamic-sampling filter, DAPO Eq. 11: keep a group iff 0 < #{correct o_i} < G.

    ``correct``: (N·G,) bool (or 0/1), whether each sample's answer is right. Filter on
    correctness, not on the length-shaped reward: an all-correct group whose lengths differ
    has unequal shaped rewards but no correctness signal, and the paper drops it.
    Returns (N,) bool.
    With G = 1 nothing is kept (a lone sample has zero advantage).
    """
    if group_size < 1 or correct.numel() % group_size:
        raise ValueError(f"{correct.numel()} samples do not split into groups of {group_size}")
    n_correct = correct.bool().reshape(-1, group_size).sum(dim=1)  # (N,)
    return (n_correct > 0) & (n_correct < group_size)  # (N,)


def soft_overlong_penalty(lengths: Tensor, max_len: int, cache_len: int) -> Tensor:
    """Soft overlong punishment, DAPO Eq. 13, added to the correctness reward.

    R_len(y) = 0                                  if |y| ≤ L_max − L_cache
             = ((L_max − L_cache) − |y|) / L_cache  if L_max − L_cache < |y| ≤ L_max
             = −1                                 if |y| > L_max

    ``lengths``: response lengths |y| in tokens, any shape; returns float of the same shape.
    The ramp reaches −1 at |y| = L_max. ``cache_len`` = 0 gives a hard −1 beyond ``max_len``.
    Paper: L_max = 20480, L_cache = 4096.
    """
    if not 0 <= cache_len <= max_len:
        raise ValueError(f"need 0 <= cache_len <= max_len, got {cache_len} and {max_len}")
    y = lengths.float()  # (...)
    expected = max_len - cache_len  # L_max − L_cache
    ramp = (expected - y) / max(cache_len, 1)  # (...) only used where cache_len > 0
    penalty = torch.where(y > expected, ramp, torch.zeros_like(y))  # (...)
    return torch.where(y > max_len, torch.full_like(y, -1.0), penalty)  # (...)


def overlong_mask(truncated: Tensor) -> Tensor:
    """Overlong filtering (DAPO §3.4): 1.0 for samples kept, 0.0 for truncated ones (those that
    hit the length limit without EOS). ``truncated``: (B,) bool; returns (B,) float.
    Use as ``mask = response_mask * overlong_mask(truncated)[:, None]``  # (B, T)."""
    return (~truncated.bool()).float()  # (B,)


def policy_loss(  # long for its docstring (the equations); the body reads top to bottom
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    agg: str = "token-mean",
    dual_clip: float | None = None,
    num_tokens: int | Tensor | None = None,
    num_seqs: int | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped policy-gradient loss −J(θ), DAPO Eq. 10 (Clip-Higher) and Eq. 12 (token level).

    r_{i,t} = exp(log π_θ − log π_old);  per token  ℓ = −min(r·Â, clip(r, 1−ε_low, 1+ε_high)·Â).
    So for Â > 0 the gradient stops once r > 1+ε_high; for Â < 0 once r < 1−ε_low.

    Shapes: ``logprobs`` (B, T) with grad; ``old_logprobs`` (B, T) from the behaviour policy
    (detached here); ``advantages`` (B,) or (B, T); ``mask`` (B, T) bool or 0/1.

    ``dual_clip`` c > 1 (verl: default 3, DAPO script 10): for Â < 0, ℓ = min(ℓ, −c·Â), bounding the
    loss when r is far above 1. None disables it.

    ``agg``: "token-mean" (DAPO Eq. 12): Σ_i Σ_t ℓ / Σ_i |o_i|, every token weighs the same;
    "seq-mean-token-mean" (GRPO): mean over tokens per sample, then over samples.

    Gradient accumulation: split a mini-batch into micro-batches, call this on each with
    ``num_tokens`` = the mini-batch's total ``mask.sum()`` (or, for seq-mean-token-mean,
    ``num_seqs`` = its number of samples with ≥ 1 token), and backward each loss; the summed
    losses and gradients then equal one call on the whole mini-batch. Left as None they are
    the micro-batch's own counts, and the result depends on how the batch was split. Under DDP,
    which averages gradients over W ranks, pass the global (all-reduced) count divided by W.

    Log-ratios are clamped to ±20 before exp (as verl) so no ratio overflows. Returns
    (loss, stats); stats are detached 0-dim tensors over the unmasked tokens: clip_frac_low
    (Â < 0, r < 1−ε_low), clip_frac_high (Â > 0, r > 1+ε_high), approx_kl (KL(π_old‖π_θ) by
    Schulman's k3 estimator, (r − 1) − log r, ≥ 0), ratio_mean, and dual_clip_frac when
    dual clipping is on.
    """
    if agg not in AGG_MODES:
        raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    mask = mask.to(logprobs.dtype)  # (B, T)
    live = mask > 0  # (B, T)
    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1)  # (B, T) or (B, 1)
    adv = adv.detach().to(logprobs.dtype).expand_as(logprobs)  # (B, T)

    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    log_ratio = torch.where(live, log_ratio, torch.zeros_like(log_ratio)).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -adv * ratio  # (B, T)
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # (B, T)
    loss_tok = torch.maximum(unclipped, clipped)  # (B, T)  −min(r·Â, clip(r)·Â)

    stats: dict[str, Tensor] = {}
    if dual_clip is not None:
        bound = -adv * dual_clip  # (B, T)
        hits = (adv < 0) & (loss_tok > bound)  # (B, T)
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, bound), loss_tok)  # (B, T)
        stats["dual_clip_frac"] = masked_mean(hits.to(mask.dtype), mask)

    dev = loss_tok.device
    if agg == "token-mean":
        denom = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=dev)
        loss = masked_sum(loss_tok, mask) / denom.to(loss_tok.dtype).clamp(min=1)
    else:
        seq_loss = masked_mean(loss_tok, mask, dim=-1)  # (B,)
        has_tokens = (mask.sum(dim=-1) > 0).to(mask.dtype)  # (B,)
        denom = has_tokens.sum() if num_seqs is None else torch.as_tensor(num_seqs, device=dev)
        loss = (seq_loss * has_tokens).sum() / denom.to(loss_tok.dtype).clamp(min=1)

    with torch.no_grad():
        low = (adv < 0) & (ratio < 1.0 - eps_low)  # (B, T)
        high = (adv > 0) & (ratio > 1.0 + eps_high)  # (B, T)
        stats["clip_frac_low"] = masked_mean(low.to(mask.dtype), mask)
        stats["clip_frac_high"] = masked_mean(high.to(mask.dtype), mask)
        stats["approx_kl"] = masked_mean(ratio - 1.0 - log_ratio, mask)  # k3
        stats["ratio_mean"] = masked_mean(ratio, mask)
    return loss, {k: v.detach() for k, v in stats.items()}


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, num_tokens: int | Tensor
) -> tuple[Tensor, Tensor]:
    """KL(π_θ ‖ π_ref) penalty by Schulman's k3 estimator (verl ``low_var_kl``, TRL's
    ``beta`` term): per token k3 = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1 ≥ 0,
    unbiased for the KL under samples from π_θ. DAPO drops it (kl_coef 0); GRPO adds β·KL.

    Shapes: ``logprobs`` (B, T) with grad; ``ref_logprobs`` (B, T) from the frozen reference;
    ``mask`` (B, T) 0/1. Returns (penalty, kl): penalty = Σ_masked k3 / ``num_tokens`` (the
    mini-batch's token count, so micro-batches sum to the mini-batch's token mean, as
    ``policy_loss``), with grad; kl = the mean k3 over this call's masked tokens, detached."""
    diff = ref_logprobs.detach() - logprobs  # (B, T)
    k3 = torch.exp(diff) - diff - 1  # (B, T)
    num_tokens = torch.as_tensor(num_tokens, device=logprobs.device)
    penalty = masked_sum(k3, mask) / num_tokens.clamp(min=1)  # 0-dim
    kl = penalty.detach() * num_tokens / mask.sum().clamp(min=1)  # 0-dim
    return penalty, kl


def _float_rows(fn: Callable[..., Tensor], logits: Tensor, *rest: Tensor, temperature=1.0):
    """Run ``fn`` on ``logits / temperature`` in float32 or better. Low-precision (bf16/fp16)
    logits are upcast one sample at a time, so the float copy is (T, V), never (B, T, V);
    the temperature divides after the upcast (a bf16 quotient would be rounded again)."""
    if logits.dtype in (torch.float32, torch.float64):
        return fn(logits / temperature if temperature != 1.0 else logits, *rest)
    rows = [fn(row.float() / temperature, *(r[i] for r in rest)) for i, row in enumerate(logits)]
    return torch.stack(rows)


def _logprobs(logits: Tensor, token_ids: Tensor) -> Tensor:
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)  # (..., T)
    return picked - torch.logsumexp(logits, dim=-1)  # (..., T)


def token_logprobs(logits: Tensor, token_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """log π(token | prefix) per position under softmax(logits / temperature): logits
    (B, T, V), token_ids (B, T) → (B, T) float.

    Computed as gathered logit − logsumexp, which equals log_softmax + gather without
    materialising a second (B, T, V) tensor. ``logits[:, t]`` must be the logits that
    predicted ``token_ids[:, t]`` (shift by one before calling)."""
    return _float_rows(_logprobs, logits, token_ids, temperature=temperature)  # (B, T)


def _entropy(logits: Tensor) -> Tensor:
    log_z = torch.logsumexp(logits, dim=-1)  # (..., T)
    probs = torch.softmax(logits, dim=-1)  # (..., T, V)
    return log_z - (probs * logits).sum(dim=-1)  # (..., T)  H = log Z − Σ p·z


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of the next-token distribution, H = −Σ_v p_v log p_v = logsumexp(z) − Σ_v p_v z_v
    (stable: no log of a tiny probability). logits (B, T, V) → (B, T) float. The paper watches
    the mean generation entropy: it should neither collapse nor explode."""
    return _float_rows(_entropy, logits, temperature=temperature)  # (B, T)
