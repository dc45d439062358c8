"""Batched sampling from a causal LM: purely token id sequences in, token id sequences,
masks, log-probs and truncation flags out. It knows nothing of tasks or rewards.

One lean loop over the KV cache samples every sequence of the batch together (left-padded
prompts, explicit position ids), so the behaviour policy's log-probs of the sampled tokens
come for free; they are the "old" log-probs of the update (never recomputed from decoded
and re-tokenised text). The log-probs are those of the temperature-scaled distribution
(as verl and TRL compute them), before top-p/top-k truncation.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import torch

from dapo_cli.algorithm import entropy_from_logits, token_logprobs
from dapo_cli.decoder import LeanDecoder


@dataclass
class Rollout:
    """The result of sampling: B = prompts × group size, P = prompt length, T = response length."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) 1 for real prompt tokens
    response_ids: torch.Tensor  # (B, T) right-padded with pad_token_id
    response_mask: torch.Tensor  # (B, T) 1 for generated tokens, EOS included
    logprobs: torch.Tensor  # (B, T) behaviour log-probs of the sampled tokens (0 where masked)
    truncated: torch.Tensor  # (B,) bool: hit max_new_tokens without EOS
    # (B,) Σ over the response of the sampling distribution's entropy (temperature-scaled,
    # before top-p/top-k), recorded while sampling; None when the sampler gives none (vLLM)
    entropy_sum: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)  # (B,)

    def select(self, index: torch.Tensor | list[int]) -> Rollout:
        """The rows ``index``, with columns that are padding in every chosen row dropped."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.prompt_ids.device)
        pm, rm = self.prompt_mask[idx], self.response_mask[idx]
        first = int(pm.any(0).long().argmax()) if bool(pm.any()) else pm.size(1) - 1
        last = int(rm.any(0).nonzero().max()) + 1 if bool(rm.any()) else 1
        return Rollout(
            prompt_ids=self.prompt_ids[idx, first:],
            prompt_mask=pm[:, first:],
            response_ids=self.response_ids[idx, :last],
            response_mask=rm[:, :last],
            logprobs=self.logprobs[idx, :last],
            truncated=self.truncated[idx],
            entropy_sum=None if self.entropy_sum is None else self.entropy_sum[idx],
        )

    def to(self, device) -> Rollout:
        fields = (getattr(self, f) for f in self.__dataclass_fields__)
        return Rollout(*(None if t is None else t.to(device) for t in fields))

    @staticmethod
    def concat(parts: Sequence[Rollout], pad_token_id: int) -> Rollout:
        """Stack rollouts of different lengths: prompts padded on the left, responses on
        the right."""
        p_len = max(r.prompt_ids.size(1) for r in parts)
        t_len = max(r.response_ids.size(1) for r in parts)

        def pad(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
            extra = width - t.size(1)
            if extra == 0:
                return t
            fill = torch.full((t.size(0), extra), value, dtype=t.dtype, device=t.device)
            return torch.cat([fill, t] if left else [t, fill], dim=1)

        return Rollout(
            prompt_ids=torch.cat([pad(r.prompt_ids, p_len, pad_token_id, True) for r in parts]),
            prompt_mask=torch.cat([pad(r.prompt_mask, p_len, 0, True) for r in parts]),
            response_ids=torch.cat(
                [pad(r.response_ids, t_len, pad_token_id, False) for r in parts]
            ),
            response_mask=torch.cat([pad(r.response_mask, t_len, 0, False) for r in parts]),
            logprobs=torch.cat([pad(r.logprobs, t_len, 0.0, False) for r in parts]),
            truncated=torch.cat([r.truncated for r in parts]),
            entropy_sum=None
            if any(r.entropy_sum is None for r in parts)
            else torch.cat([r.entropy_sum for r in parts]),
        )

    def response_texts(self, tokenizer) -> list[str]:
        """Decoded responses without special tokens (for the verifiers and for logging)."""
        ids_all, masks = self.response_ids.cpu(), self.response_mask.bool().cpu()  # one copy
        return [
            tokenizer.decode(ids[mask].tolist(), skip_special_tokens=True)
            for ids, mask in zip(ids_all, masks, strict=True)
        ]


def rollout_from_tokens(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    stopped: Sequence[bool],
    *,
    group_size: int,
    pad_token_id: int,
    device: torch.device | str = "cpu",
) -> Rollout:
    """A ``Rollout`` from token lists: ``prompts`` (N) unpadded, ``responses`` (N·G, row
    i·G + j is the j-th response to prompt i) with the stop token included, ``stopped``
    (N·G) True where a stop token ended the response (False: the length limit did). Prompts
    are left-padded, responses right-padded with ``pad_token_id``; the log-probs are zeros
    (the caller fills them)."""
    n, G = len(prompts), group_size
    if len(responses) != n * G or len(stopped) != n * G:
        raise ValueError(f"{len(responses)} responses for {n} prompts x {G}")
    prompt_ids = padded(prompts, pad_token_id, left=True).repeat_interleave(G, 0)  # (B, P)
    response_ids = padded(responses, pad_token_id, min_width=1)  # (B, T)
    P, T = prompt_ids.size(1), response_ids.size(1)
    p_len = torch.tensor([len(p) for p in prompts]).repeat_interleave(G)[:, None]  # (B, 1)
    r_len = torch.tensor([len(r) for r in responses])[:, None]
    return Rollout(
        prompt_ids=prompt_ids.to(device),
        prompt_mask=(torch.arange(P) >= P - p_len).long().to(device),
        response_ids=response_ids.to(device),
        response_mask=(torch.arange(T) < r_len).long().to(device),
        logprobs=torch.zeros((n * G, T), device=device),
        truncated=~torch.as_tensor(list(stopped), dtype=torch.bool).to(device),
    )


def padded(
    seqs: Sequence[Sequence], value, *, left: bool = False, min_width: int = 0, dtype=torch.long
) -> torch.Tensor:
    """(len(seqs), width) with each sequence padded by ``value`` on the left or the right."""
    t = torch.nn.utils.rnn.pad_sequence(
        [torch.as_tensor(list(x), dtype=dtype) for x in seqs],
        batch_first=True,
        padding_value=value,
        padding_side="left" if left else "right",
    )
    extra = max(0, min_width - t.size(1))
    return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)


@dataclass(frozen=True)
class Sampling:
    """How to sample: what training (``rollout.*``), eval and chat each pass to a sampler."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False


class Sampler(Protocol):
    """Where responses come from: ``TorchSampler`` (our loop on the policy itself) or
    ``vllm_engine.VllmEngine``. ``sample`` returns ``n`` responses to each prompt (token ids,
    unpadded; rows i·n … i·n+n−1 answer prompt i) as a ``Rollout`` whose ``logprobs`` are the
    sampler's numbers for the sampled tokens. ``exact_logprobs``: those are the trained
    module's own (same code, same weights), so with fp32 weights they can serve as the old
    log-probs; else the update takes or recomputes its own (``step.old_logprobs_source``).
    ``own_weights``: it samples from its own copy, refreshed by ``load_weights`` after each
    update."""

    exact_logprobs: bool
    own_weights: bool

    def sample(
        self,
        policy: Any,
        prompts: Sequence[Sequence[int]],
        n: int,
        sampling: Sampling,
        generator: torch.Generator | None = None,
        on_token: Callable[[torch.Tensor], None] | None = None,
    ) -> Rollout: ...

    def load_weights(self, model: Any) -> None: ...


class TorchSampler:
    """``sample`` (below) on the policy's own model: prompts left-padded into one batch."""

    exact_logprobs = True
    own_weights = False

    def sample(self, policy, prompts, n, sampling, generator=None, on_token=None) -> Rollout:
        ids = padded(prompts, policy.pad_id, left=True).to(policy.device)  # (N, P)
        mask = padded([[1] * len(p) for p in prompts], 0, left=True).to(policy.device)
        return sample(
            policy.model, ids, mask, repeat=n,  # the n responses to a prompt share its prefill
            max_new_tokens=sampling.max_new_tokens, eos_token_ids=policy.stop_ids,
            pad_token_id=policy.pad_id, temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=sampling.top_k, greedy=sampling.greedy,
            generator=generator, on_token=on_token,
        )  # fmt: skip

    def load_weights(self, model) -> None:  # it samples from the policy itself
        pass


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left padding does not shift them. (B, L)"""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf. logits: (B, V)"""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from ``probs`` (b, V) by inverting the cumulative distribution with
    one uniform number per row (``torch.multinomial`` on the CPU draws an exponential number
    for every vocabulary entry, which costs more than the model's step on a tiny model).
    Tokens of probability 0 are never drawn. Returns (b,) long."""
    cdf = probs.cumsum(-1)  # (b, V)
    u = torch.rand(
        probs.size(0), 1, generator=generator, device=probs.device, dtype=cdf.dtype
    )  # (b, 1) in [0, 1)
    tok = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first index with cdf > u
    return tok.squeeze(-1).clamp(max=probs.size(-1) - 1)


def _unwrapped(model):
    """The transformers model itself: a peft (LoRA) model passes every keyword on to it, and
    its adapters live inside that model's modules (so it also computes the same function)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@cache
def _forward_params(model_cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_cls.forward).parameters)


def _step_kwargs(model, past) -> dict:
    """The KV-cache argument under its name in this transformers version (``cache`` in
    recent 5.x, ``past_key_values`` before)."""
    params = _forward_params(type(_unwrapped(model)))
    kwargs = {"use_cache": True}
    if past is not None:
        kwargs["cache" if "cache" in params else "past_key_values"] = past
    return kwargs


def _cache_of(out):
    past = getattr(out, "cache", None)
    return past if past is not None else out.past_key_values


def _keep_logits_kwargs(model, n: int) -> dict:
    """Ask for the logits of the last ``n`` positions only, when the model's forward takes
    that argument ({} otherwise: then it returns logits at every position)."""
    params = _forward_params(type(_unwrapped(model)))
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: n}
    return {}


# On CUDA, sampling keeps SDPA off its cuDNN backend. Recent PyTorch prefers cuDNN's attention
# on Hopper/Blackwell GPUs for bf16/fp16, and cuDNN builds an execution plan for every new
# shape; decoding meets a new key length at every token, and every training step brings other
# prompts (other padded lengths), so the plans are rarely reused. On an H100, generation
# inside a DAPO step ran 4x slower than the same sample() on prompts it had already seen
# (docs/benchmarks.md, "GPU"); these plans are the likely cause, not yet confirmed by a
# profile. Flash, memory-efficient and math attention need no plan, so leaving cuDNN out costs
# nothing where the guess is wrong; bench_gpu.py measures both ways by replacing this function.


def attention_backends(device: torch.device):
    """The SDPA backends sampling allows on ``device`` (a context manager): all but cuDNN's
    on CUDA; the default everywhere else."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def _with_sampling_attention(fn):
    @functools.wraps(fn)
    def wrapper(model, prompt_ids: torch.Tensor, *args, **kwargs):
        with attention_backends(prompt_ids.device):
            return fn(model, prompt_ids, *args, **kwargs)

    return wrapper


@_with_sampling_attention
@torch.no_grad()
def sample(  # one piece on purpose: the per-token hot loop, prefill → decode → finish
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    lean: bool = True,
    repeat: int = 1,
) -> Rollout:
    """Sample ``repeat`` responses per row of ``prompt_ids`` (G samples per prompt: repeat=G).

    Stops at any of ``eos_token_ids`` (the EOS is part of the response) or after
    ``max_new_tokens`` (then ``truncated`` is True). ``greedy`` takes the argmax.
    ``on_token(tok)`` is called with each step's tokens (B,) as they are sampled (pad for
    finished rows), e.g. to stream a reply; an exception it raises ends sampling.
    ``repeat``: sample each prompt row that many times (rows i·repeat ... of the result);
    the prompt is run through the model once and its KV cache shared by the copies.
    ``lean`` decodes Llama-family models with ``decoder.LeanDecoder`` (same numbers, less
    copying); False, or any other model, calls the model's forward for every token.
    """
    model = _unwrapped(model)  # a LoRA model's base runs the KV-cache decoder
    device = prompt_ids.device
    eos = torch.tensor(sorted(set(eos_token_ids)), device=device)
    mask = prompt_mask.long()  # (N, P)
    positions = position_ids_from_mask(mask)  # (N, P)
    out = model(
        input_ids=prompt_ids,
        attention_mask=mask,
        position_ids=positions,
        **_step_kwargs(model, None),
        **_keep_logits_kwargs(model, 1),  # the prefill needs the last only
    )
    past = _cache_of(out)
    decoder = None
    if lean and LeanDecoder.supports(model) and hasattr(past, "layers"):
        decoder = LeanDecoder(model, past, mask, mask.size(1) + max_new_tokens, repeat)
        past = None
    elif repeat > 1:
        past.batch_repeat_interleave(repeat)
    prompt_ids = prompt_ids.repeat_interleave(repeat, 0)  # (B, P), B = N · repeat
    prompt_mask = mask = mask.repeat_interleave(repeat, 0)  # mask: the model's, grows per step
    batch = prompt_ids.size(0)
    next_logits = out.logits[:, -1, :].repeat_interleave(repeat, 0)  # (B, V)
    next_pos = positions[:, -1:].repeat_interleave(repeat, 0) + 1  # (B, 1)

    tokens, logps, alive_cols = [], [], []
    entropy_sum = torch.zeros(batch, dtype=torch.float32, device=device)  # (B,)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)  # the batch row of each row still computed
    can_drop = decoder is not None or hasattr(past, "batch_select_indices")
    for _ in range(max_new_tokens):
        logits = next_logits.float() / temperature  # (b, V), b = len(rows)
        logp = torch.log_softmax(logits, dim=-1)
        if greedy:
            tok = logits.argmax(-1)  # (b,)
        else:
            probs = filter_logits(logits, top_k, top_p).softmax(-1)
            tok = draw(probs, generator)  # (b,)
        live = ~finished[rows]  # (b,)
        tok = torch.where(live, tok, torch.full_like(tok, pad_token_id))
        step_tok = torch.full((batch,), pad_token_id, dtype=tok.dtype, device=device)
        step_tok[rows] = tok
        step_logp = torch.zeros(batch, dtype=logp.dtype, device=device)
        step_logp[rows] = torch.where(live, logp.gather(-1, tok[:, None]).squeeze(-1), 0.0)
        entropy = -(logp.exp() * logp).nan_to_num().sum(-1)  # (b,)  H = −Σ p log p
        entropy_sum[rows] += torch.where(live, entropy, 0.0)
        alive = torch.zeros(batch, dtype=torch.bool, device=device)
        alive[rows] = live
        tokens.append(step_tok)
        logps.append(step_logp)
        alive_cols.append(alive)
        if on_token is not None:
            on_token(step_tok)
        finished = finished | torch.isin(step_tok, eos)
        if bool(finished.all()):
            break
        if decoder is None:  # the lean decoder keeps its own record of valid columns
            mask = torch.cat([mask, live.long()[:, None]], dim=-1)
        done = finished[rows]  # (b,)
        if can_drop and 4 * int(done.sum()) >= len(rows):
            # a quarter of the rows have finished: stop computing them (KV cache included)
            keep = (~done).nonzero().squeeze(-1)
            rows, next_pos, tok, live = rows[keep], next_pos[keep], tok[keep], live[keep]
            if decoder is not None:
                decoder.select(keep)
            else:
                past.batch_select_indices(keep)
                mask = mask[keep]
        if decoder is not None:
            next_logits = decoder.step(tok, next_pos, live)
        else:
            out = model(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                **_step_kwargs(model, past),
            )
            past = _cache_of(out)
            next_logits = out.logits[:, -1, :]
        next_pos = next_pos + 1

    response_ids = torch.stack(tokens, dim=1)  # (B, T)
    response_mask = torch.stack(alive_cols, dim=1).long()  # (B, T)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask.long(),
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=torch.stack(logps, dim=1),
        truncated=~finished,
        entropy_sum=entropy_sum,
    )


def sequence_logprobs(
    model,
    rollout: Rollout,
    temperature: float = 1.0,
    *,
    return_entropy: bool = False,
    groups: torch.Tensor | None = None,
):
    """Log-probs (B, T) of the rollout's response tokens under ``model`` (with gradients when
    enabled), computed on the same token ids and positions as sampling used; with
    ``return_entropy`` also the per-token entropy (B, T) of the temperature-scaled policy.

    ``groups`` (B,): rows with the same value have the same prompt (a prompt's G responses).
    Then each prompt runs through the model once and its keys and values serve its rows, as
    in sampling: the same numbers and gradients, with (rows − prompts) fewer prompt passes."""
    logits = None if groups is None else _shared_prompt_logits(model, rollout, groups)
    if logits is None:
        logits = _full_logits(model, rollout)
    logprobs = token_logprobs(logits, rollout.response_ids, temperature)  # (B, T)
    if not return_entropy:
        return logprobs
    with torch.no_grad():
        entropy = entropy_from_logits(logits.detach(), temperature)  # (B, T)
    return logprobs, entropy


def recompute_logprobs(
    model, rollout: Rollout, temperature: float, micro_batch_size: int, context=None
) -> torch.Tensor:
    """``model``'s log-probs (B, T) of the rollout's response tokens (0 where masked), in
    micro-batches of ``micro_batch_size`` rows, without gradients, under ``context`` (e.g.
    the update's autocast): the old log-probs of an update whose sampler's numbers differ
    from its own (another engine, or another precision)."""
    out = torch.zeros_like(rollout.response_ids, dtype=torch.float32)
    B = rollout.response_ids.size(0)
    with torch.no_grad(), context or contextlib.nullcontext():
        for start in range(0, B, max(1, micro_batch_size)):
            rows = list(range(start, min(start + micro_batch_size, B)))
            sub = rollout.select(rows)
            logp = sequence_logprobs(model, sub, temperature).float()  # (b, t), t <= T
            out[start : start + len(rows), : logp.size(1)] = logp * sub.response_mask
    return out


def _full_logits(model, rollout: Rollout) -> torch.Tensor:
    """(B, T, V): position t predicts response token t; prompt and response in one pass."""
    input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)  # (B, P+T)
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1)  # (B, P+T)
    T = rollout.response_ids.size(1)
    keep = _keep_logits_kwargs(model, T + 1)  # the LM head on response positions only
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        use_cache=False,
        **keep,
    )
    start = rollout.prompt_ids.size(1) - 1 if not keep else 0
    return out.logits[:, start:-1, :]


def _shared_prompt_logits(model, rollout: Rollout, groups: torch.Tensor) -> torch.Tensor | None:
    """``_full_logits`` with each distinct prompt run once: its KV cache (with gradients) is
    indexed out to its rows, which then run only their responses. None when there is
    nothing to share or the model's cache cannot be indexed (then: one pass per row)."""
    uniq, inverse = torch.unique(groups.to(rollout.prompt_ids.device), return_inverse=True)
    if len(uniq) == len(groups):
        return None
    rows = torch.arange(len(groups), device=inverse.device)
    first = torch.zeros(len(uniq), dtype=torch.long, device=inverse.device).scatter_(
        0, inverse, rows
    )
    p_ids, p_mask = rollout.prompt_ids[first], rollout.prompt_mask[first]  # (N, P)
    out = model(
        input_ids=p_ids,
        attention_mask=p_mask,
        position_ids=position_ids_from_mask(p_mask),
        **_step_kwargs(model, None),
        **_keep_logits_kwargs(model, 1),
    )
    cache = _cache_of(out)
    if not hasattr(cache, "batch_select_indices"):
        return None
    cache.batch_select_indices(inverse)  # (N, ...) -> (B, ...), differentiable indexing
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1)  # (B, P+T)
    P, T = rollout.prompt_ids.size(1), rollout.response_ids.size(1)
    out_r = model(
        input_ids=rollout.response_ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask)[:, P:],
        **_step_kwargs(model, cache),
        **_keep_logits_kwargs(model, T),
    )
    # the prompt's last position predicts response token 0; response position t, token t+1
    return torch.cat([out.logits[:, -1:][inverse], out_r.logits[:, : T - 1]], dim=1)
