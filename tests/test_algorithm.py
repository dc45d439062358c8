"""The DAPO maths against hand-computed numbers (the arithmetic is in the comments)."""

import math

import pytest
import torch

from dapo_cli.algorithm import (
    entropy_from_logits,
    group_advantages,
    keep_informative_groups,
    kl_penalty,
    masked_mean,
    overlong_mask,
    policy_loss,
    soft_overlong_penalty,
    token_logprobs,
)

EPS = 1e-6


def one_token(ratio, adv, **kw):
    """Loss and d loss / d logprob for a single token with π_old = 1 and π_θ = ratio."""
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


# --- advantages (Eq. 9) ---------------------------------------------------------------------


def test_group_advantages_population_std():
    # group 1: [1, -1, -1, 1]: mean 0, population var (1+1+1+1)/4 = 1 → ±1/(1+ε)
    # group 2: [1, 0, 0, 0]: mean 0.25, var (0.75² + 3·0.25²)/4 = 0.75/4 = 0.1875,
    #          std = √0.1875 = √3/4 → 0.75/(√3/4) = √3, −0.25/(√3/4) = −1/√3
    rewards = torch.tensor([1.0, -1, -1, 1, 1, 0, 0, 0])
    got = group_advantages(rewards, group_size=4)
    s3 = math.sqrt(3)
    want = torch.tensor([1, -1, -1, 1, s3, -1 / s3, -1 / s3, -1 / s3])
    want[:4] /= 1 + EPS
    assert torch.allclose(got, want, atol=1e-5)
    assert got.shape == rewards.shape


def test_group_advantages_no_signal_is_exactly_zero():
    # G = 1: every group is a single sample → 0 (not 0/ε noise, not NaN)
    assert torch.equal(group_advantages(torch.tensor([1.0, -1.0, 0.3]), 1), torch.zeros(3))
    # all-equal group: in float32 the mean of [0.9, 0.9, 0.9] is not 0.9, and the rounding
    # error over (std≈0 + ε) would be 0.056; the advantage must still be exactly 0
    got = group_advantages(torch.tensor([0.9, 0.9, 0.9, 1.0, -1.0, 1.0]), 3)
    assert torch.equal(got[:3], torch.zeros(3))
    assert torch.isfinite(got).all() and got[3:].abs().sum() > 0
    # integer rewards are fine too
    assert group_advantages(torch.tensor([1, 1, -1, -1]), 2).tolist() == [0, 0, 0, 0]


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


# --- clipped loss (Eq. 10, Clip-Higher) -----------------------------------------------------


def test_clip_higher_positive_advantage_stops_above_one_plus_eps_high():
    # Â = +1, ε_high = 0.28: r = 1.27 < 1.28 → ℓ = −1.27, dℓ/dlogp = −Â·r = −1.27
    loss, grad, _ = one_token(1.27, 1.0)
    assert loss == pytest.approx(-1.27) and grad == pytest.approx(-1.27)
    # r = 1.29 > 1.28 → ℓ = −min(1.29, 1.28) = −1.28, constant in r: gradient exactly 0
    loss, grad, _ = one_token(1.29, 1.0)
    assert loss == pytest.approx(-1.28) and grad == 0.0
    # the low bound does not act for Â > 0: r = 0.5 → ℓ = −min(0.5, 0.8) = −0.5, grad −0.5
    loss, grad, _ = one_token(0.5, 1.0)
    assert loss == pytest.approx(-0.5) and grad == pytest.approx(-0.5)


def test_clip_negative_advantage_stops_below_one_minus_eps_low():
    # Â = −1, ε_low = 0.2: r = 0.81 > 0.8 → ℓ = −min(−0.81, −0.81) = 0.81, dℓ/dlogp = −Â·r = 0.81
    loss, grad, _ = one_token(0.81, -1.0)
    assert loss == pytest.approx(0.81) and grad == pytest.approx(0.81)
    # r = 0.79 < 0.8 → ℓ = −min(−0.79, −0.8) = 0.8, gradient exactly 0
    loss, grad, _ = one_token(0.79, -1.0)
    assert loss == pytest.approx(0.8) and grad == 0.0
    # the high bound does not act for Â < 0: r = 1.5 → ℓ = −min(−1.5, −1.28) = 1.5, grad 1.5
    loss, grad, _ = one_token(1.5, -1.0)
    assert loss == pytest.approx(1.5) and grad == pytest.approx(1.5)


def test_clip_is_asymmetric_with_decoupled_eps():
    # with ε_low = ε_high = 0.2 (symmetric PPO), r = 1.25 is already clipped; with 0.28 it is not
    assert one_token(1.25, 1.0, eps_high=0.2)[1] == 0.0
    assert one_token(1.25, 1.0)[1] == pytest.approx(-1.25)


def test_dual_clip_bounds_negative_advantage_loss():
    # Â = −2, r = 5: plain clip gives ℓ = −min(−10, −2·1.28) = 10; dual clip c = 3 caps it at
    # −c·Â = 6, with zero gradient
    assert one_token(5.0, -2.0)[0] == pytest.approx(10.0)
    loss, grad, stats = one_token(5.0, -2.0, dual_clip=3.0)
    assert loss == pytest.approx(6.0) and grad == 0.0 and stats["dual_clip_frac"] == 1.0
    # r = 2 < c: ℓ = 4 < 6, untouched, gradient −Â·r = 4
    loss, grad, stats = one_token(2.0, -2.0, dual_clip=3.0)
    assert loss == pytest.approx(4.0) and grad == pytest.approx(4.0)
    assert stats["dual_clip_frac"] == 0.0
    # positive advantages are never dual-clipped: r = 5, Â = 1 → ℓ = −1.28
    assert one_token(5.0, 1.0, dual_clip=3.0)[0] == pytest.approx(-1.28)
    with pytest.raises(ValueError, match="dual_clip"):
        one_token(1.0, 1.0, dual_clip=1.0)


# --- aggregation (Eq. 12) and gradient accumulation ---------------------------------------


def test_token_mean_vs_seq_mean_on_unequal_lengths():
    # lengths 1 and 3, r = 1 everywhere, Â = [+1, −1] → per-token ℓ = −Â: sample 0: [−1],
    # sample 1: [1, 1, 1]
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    zeros, adv = torch.zeros(2, 3), torch.tensor([1.0, -1.0])
    # token-mean: (−1 + 1 + 1 + 1) / 4 tokens = 0.5
    loss, _ = policy_loss(zeros, zeros, adv, mask, agg="token-mean")
    assert loss.item() == pytest.approx(0.5)
    # seq-mean-token-mean: (−1/1 + 3/3) / 2 samples = 0
    loss, _ = policy_loss(zeros, zeros, adv, mask, agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(0.0)
    # per-token advantages (B, T) broadcast the same way: Â = −1 on the long sample's 3rd token
    # only → token-mean (−1 + 0 + 0 + 1)/4 = 0
    adv_bt = torch.tensor([[1.0, 9.0, 9.0], [0.0, 0.0, -1.0]])  # 9s sit under the mask
    assert policy_loss(zeros, zeros, adv_bt, mask)[0].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="agg"):
        policy_loss(zeros, zeros, adv, mask, agg="seq-mean")


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batches_with_global_count_match_one_batch(agg):
    torch.manual_seed(0)
    lengths = torch.tensor([1, 4, 2, 3])  # unequal lengths, split unevenly: 5 | 5 tokens
    mask = (torch.arange(4)[None, :] < lengths[:, None]).float()  # (4, 4)
    old = torch.randn(4, 4)
    new = (old + 0.4 * torch.randn(4, 4)).requires_grad_()  # ratios on both sides of the clip
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])

    loss, _ = policy_loss(new, old, adv, mask, agg=agg)
    loss.backward()
    one_batch = new.grad.clone()

    def accumulate(count):
        new.grad = None
        total = 0.0
        for rows in (slice(0, 2), slice(2, 4)):
            part = dict(num_tokens=count) if agg == "token-mean" else dict(num_seqs=count)
            loss_mb, _ = policy_loss(new[rows], old[rows], adv[rows], mask[rows], agg=agg, **part)
            loss_mb.backward()
            total += loss_mb.item()
        return total, new.grad.clone()

    count = int(mask.sum()) if agg == "token-mean" else 4
    total, grad = accumulate(count)
    assert total == pytest.approx(loss.item(), abs=1e-6)
    assert torch.allclose(grad, one_batch, atol=1e-6)
    # without the global count each micro-batch divides by its own, and the sum of the two
    # halves weighs them twice: the gradient depends on the split (2× here)
    _, grad_local = accumulate(None)
    assert not torch.allclose(grad_local, one_batch, atol=1e-4)
    assert torch.allclose(grad_local, 2 * one_batch, atol=1e-6)


# --- statistics and masking -----------------------------------------------------------------


def test_clip_fractions_kl_and_ratio_mean():
    # six live tokens: (Â, r) = (+,1.5) high-clipped; (+,0.5) no; (−,0.5) low-clipped; (−,1.5) no;
    # (+,1.0), (−,1.0) no. A 7th, masked token has r = 100 and Â > 0 and must not count.
    r = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.0, 1.0, 100.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    _, stats = policy_loss(r.log(), torch.zeros_like(r), adv, mask)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 6)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 6)
    # ratio_mean = (1.5 + 0.5 + 0.5 + 1.5 + 1 + 1) / 6 = 1
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    # k3 = (r − 1) − ln r: r = 1.5 → 0.5 − 0.405465 = 0.094535; r = 0.5 → −0.5 + 0.693147 =
    # 0.193147; r = 1 → 0. Mean = 2·(0.094535 + 0.193147)/6 = 0.095894
    assert stats["approx_kl"].item() == pytest.approx(0.095894, abs=1e-6)
    assert "dual_clip_frac" not in stats
    assert all(not v.requires_grad for v in stats.values())


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_all_masked_gives_zero_loss_and_no_nan(agg):
    # garbage (−inf/NaN) log-probs under the mask must not leak into loss, grad or stats
    new = torch.tensor([[0.0, -math.inf], [float("nan"), 3.0]], requires_grad=True)
    old = torch.tensor([[50.0, 0.0], [0.0, -math.inf]])
    mask = torch.zeros(2, 2)
    loss, stats = policy_loss(new, old, torch.tensor([1.0, -1.0]), mask, agg=agg, dual_clip=3.0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(new.grad, torch.zeros(2, 2))
    assert all(v.item() == 0.0 for v in stats.values())


def test_masked_tokens_contribute_nothing():
    # the same live tokens with different values under the mask give the same loss and grad
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    old, adv = torch.zeros(2, 3), torch.tensor([1.0, -1.0])
    results = []
    for pad in (0.0, 7.0):
        new = torch.tensor([[0.1, -0.1, pad], [0.2, pad, -pad]], requires_grad=True)
        loss, _ = policy_loss(new, old, adv, mask)
        loss.backward()
        results.append((loss.item(), new.grad[mask.bool()]))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_kl_penalty_k3_by_hand():
    """k3 = e^d − d − 1 with d = log π_ref − log π_θ; the masked token adds nothing; the
    penalty is over the mini-batch's token count, the reported KL over this call's tokens."""
    logp = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.8), 0.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)], [math.log(0.4), -5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # d: ln 0.5, ln 2, ln 0.5 → k3: 0.5 − ln 0.5 − 1, 2 − ln 2 − 1, 0.5 − ln 0.5 − 1
    k3 = [0.5 + math.log(2) - 1, 1 - math.log(2), 0.5 + math.log(2) - 1]
    penalty, kl = kl_penalty(logp, ref, mask, num_tokens=6)
    assert penalty.item() == pytest.approx(sum(k3) / 6, abs=1e-6)
    assert kl.item() == pytest.approx(sum(k3) / 3, abs=1e-6)
    penalty.backward()  # d k3 / d logp = 1 − e^d, over the 6 tokens
    expected = [[(1 - 0.5) / 6, (1 - 2) / 6], [(1 - 0.5) / 6, 0.0]]
    assert torch.allclose(logp.grad, torch.tensor(expected), atol=1e-6)
    assert kl_penalty(ref, ref, mask, 3)[0].item() == 0.0  # equal policies: no penalty


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, math.inf], [4.0, float("nan"), 100.0]])  # junk under the mask
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)  # (1 + 2 + 4) / 3
    assert masked_mean(x, mask, dim=-1).tolist() == [1.5, 4.0]
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0


# --- overlong shaping (Eq. 13, §3.4) --------------------------------------------------------


def test_soft_overlong_penalty_at_the_boundaries():
    # L_max = 20, L_cache = 4 → L_max − L_cache = 16
    lengths = torch.tensor([0, 16, 17, 18, 20, 21, 50])
    # 16 → 0; 17 → (16−17)/4 = −0.25; 18 → −0.5; 20 → (16−20)/4 = −1; 21, 50 → −1
    want = [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]
    assert soft_overlong_penalty(lengths, max_len=20, cache_len=4).tolist() == want


def test_soft_overlong_penalty_paper_values():
    # L_max = 20480, L_cache = 4096: 16384 → 0; 16385 → −1/4096 = −0.000244140625; 20480 → −1
    lengths = torch.tensor([[16384, 16385], [20480, 20481]])
    got = soft_overlong_penalty(lengths, max_len=20480, cache_len=4096)
    assert got.dtype == torch.float32 and got.shape == (2, 2)
    assert got.tolist() == [[0.0, -1 / 4096], [-1.0, -1.0]]


def test_soft_overlong_penalty_without_cache_is_hard():
    # cache_len = 0: 0 up to and including L_max, −1 beyond
    got = soft_overlong_penalty(torch.tensor([9, 10, 11]), max_len=10, cache_len=0)
    assert got.tolist() == [0.0, 0.0, -1.0]
    with pytest.raises(ValueError):
        soft_overlong_penalty(torch.tensor([1]), max_len=10, cache_len=11)


def test_overlong_mask_drops_truncated_samples():
    keep = overlong_mask(torch.tensor([False, True, False]))
    assert keep.tolist() == [1.0, 0.0, 1.0] and keep.dtype == torch.float32


# --- dynamic sampling filter (Eq. 11) -------------------------------------------------------


def test_keep_informative_groups():
    # G = 4: mixed (3/4) → keep; all correct → drop; all wrong → drop; mixed (1/4) → keep
    correct = torch.tensor([1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.bool)
    keep = keep_informative_groups(correct, group_size=4)
    assert keep.tolist() == [True, False, False, True] and keep.dtype == torch.bool
    # G = 1: a lone sample never carries signal
    assert keep_informative_groups(torch.tensor([True, False]), 1).tolist() == [False, False]
    with pytest.raises(ValueError):
        keep_informative_groups(correct, 3)


# --- logits helpers -------------------------------------------------------------------------


def test_token_logprobs_and_entropy_match_reference():
    torch.manual_seed(0)
    logits = 5 * torch.randn(2, 3, 7)  # (B, T, V), peaked enough to stress stability
    ids = torch.randint(0, 7, (2, 3))
    want = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, ids), want, atol=1e-5)
    dist = torch.distributions.Categorical(logits=logits)
    assert torch.allclose(entropy_from_logits(logits), dist.entropy(), atol=1e-5)
    # huge logits: no overflow; a near one-hot distribution has entropy ≈ 0
    big = torch.tensor([[[1000.0, 0.0, 0.0]]])
    assert entropy_from_logits(big).item() == pytest.approx(0.0, abs=1e-6)
    assert token_logprobs(big, torch.tensor([[0]])).item() == pytest.approx(0.0, abs=1e-6)
    # bf16 logits are upcast row by row: results are float32 and close to the fp32 answer
    low = logits.bfloat16()
    assert token_logprobs(low, ids).dtype == torch.float32
    ref = torch.log_softmax(low.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(low, ids), ref, atol=1e-5)
    assert torch.allclose(entropy_from_logits(low), dist.entropy(), atol=0.05)
    # a temperature divides after the upcast: bf16 logits / T in bf16 would round again
    hot = torch.log_softmax(low.float() / 0.7, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(low, ids, 0.7), hot, atol=1e-5)
    hot_entropy = torch.distributions.Categorical(logits=low.float() / 0.7).entropy()
    assert torch.allclose(entropy_from_logits(low, 0.7), hot_entropy, atol=1e-5)


def test_token_logprobs_gradient_matches_log_softmax():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    ids = torch.randint(0, 5, (2, 3))
    token_logprobs(logits, ids).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).sum().backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)
