"""Sampling: the recorded log-probs are the policy's, masks and truncation are right."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from dapo_cli.rollout import Rollout, filter_logits, sample, sequence_logprobs

EOS, PAD = 1, 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


def prompts():
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 0, 0, 3, 4]])
    return ids.repeat_interleave(4, 0), (ids != PAD).long().repeat_interleave(4, 0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recorded_logprobs_match_a_full_forward(model, temperature):
    ids, mask = prompts()
    g = torch.Generator().manual_seed(0)
    r = sample(model, ids, mask, max_new_tokens=12, eos_token_ids=[EOS, 2, 3],
               pad_token_id=PAD, temperature=temperature, generator=g)  # fmt: skip
    full = sequence_logprobs(model, r, temperature)
    m = r.response_mask.bool()
    assert torch.allclose(full[m], r.logprobs[m], atol=1e-5)
    assert (r.logprobs[~m] == 0).all()


def test_masks_eos_and_truncation(model):
    ids, mask = prompts()
    g = torch.Generator().manual_seed(1)
    r = sample(model, ids, mask, max_new_tokens=6, eos_token_ids=[EOS, 2, 3, 4, 5],
               pad_token_id=PAD, generator=g)  # fmt: skip
    for row in range(r.response_ids.size(0)):
        n = int(r.lengths[row])
        toks = r.response_ids[row].tolist()
        ended = any(t in (EOS, 2, 3, 4, 5) for t in toks[:n])
        assert bool(r.truncated[row]) == (not ended)
        if ended:  # the EOS is the last response token, padding after it
            assert toks[n - 1] in (EOS, 2, 3, 4, 5)
            assert all(t == PAD for t in toks[n:])
        else:
            assert n == 6
    # padding rows of the same prompt do not change its samples: left padding is invisible
    single = sample(model, ids[8:9, 3:], mask[8:9, 3:], max_new_tokens=6, greedy=True,
                    eos_token_ids=[EOS], pad_token_id=PAD)  # fmt: skip
    batched = sample(model, ids[8:12], mask[8:12], max_new_tokens=6, greedy=True,
                     eos_token_ids=[EOS], pad_token_id=PAD)  # fmt: skip
    assert torch.equal(single.response_ids[0], batched.response_ids[0])


def test_greedy_equals_top_k_one_and_is_deterministic(model):
    ids, mask = prompts()
    kw = {"max_new_tokens": 8, "eos_token_ids": [EOS], "pad_token_id": PAD}
    greedy = sample(model, ids, mask, greedy=True, **kw)
    top1 = sample(model, ids, mask, top_k=1, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(greedy.response_ids, top1.response_ids)
    a = sample(model, ids, mask, generator=torch.Generator().manual_seed(5), **kw)
    b = sample(model, ids, mask, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a.response_ids, b.response_ids)


def test_filter_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda x: torch.isfinite(x)[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.8)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits)) == [True] * 4


def test_select_and_concat(model):
    ids, mask = prompts()
    r = sample(model, ids, mask, max_new_tokens=5, eos_token_ids=[EOS], pad_token_id=PAD,
               generator=torch.Generator().manual_seed(2))  # fmt: skip
    part = r.select([8, 9])  # the prompt padded by three columns: they are dropped
    assert part.prompt_ids.size(1) == 2
    back = Rollout.concat([r.select(list(range(0, 6))), r.select(list(range(6, 12)))], PAD)
    p, t = back.prompt_ids.size(1), back.response_ids.size(1)
    for name in ("prompt_ids", "prompt_mask"):  # left-padded: compare the right-hand columns
        assert torch.equal(getattr(back, name), getattr(r, name)[:, -p:]), name
    for name in ("response_ids", "response_mask", "logprobs"):
        assert torch.equal(getattr(back, name), getattr(r, name)[:, :t]), name
    assert not r.response_mask[:, t:].any()  # nothing but padding was dropped
    assert torch.equal(back.truncated, r.truncated)


def test_finished_rows_leave_the_batch_without_changing_any_row(model):
    ids, mask = prompts()
    kw = {"max_new_tokens": 10, "eos_token_ids": [EOS, 2, 3, 4, 5, 6, 7], "pad_token_id": PAD}
    sizes = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: sizes.append(o.size(0)))
    try:
        batched = sample(model, ids, mask, greedy=True, **kw)
    finally:
        hook.remove()
    lengths = batched.lengths.tolist()
    assert min(lengths) < max(lengths)  # rows did finish at different steps
    assert sizes[0] == 12 and min(sizes) < 12  # and the finished ones stopped being computed
    for row in range(12):  # each row as if sampled alone (alone, nothing is ever dropped)
        p = int(mask[row].argmax())
        alone = sample(model, ids[row : row + 1, p:], mask[row : row + 1, p:], greedy=True, **kw)
        n = lengths[row]
        assert alone.response_ids[0, :n].tolist() == batched.response_ids[row, :n].tolist()
        assert torch.allclose(alone.logprobs[0, :n], batched.logprobs[row, :n], atol=1e-5)


def test_draw_follows_the_distribution_and_never_draws_a_zero():
    from dapo_cli.rollout import draw

    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).repeat(40_000, 1)
    tok = draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(tok, minlength=4).float() / len(tok)
    assert torch.allclose(freq, probs[0], atol=0.01), freq
    assert int((tok == 3).sum()) == 0
    first_zero = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert draw(first_zero, torch.Generator().manual_seed(1)).item() == 2


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_lean_decoding_and_shared_prefill_give_the_models_own_numbers(model, family):
    from dapo_cli.decoder import LeanDecoder

    net = model if family == "qwen2" else llama()
    assert LeanDecoder.supports(net)
    ids, mask = prompts()
    uniq, umask = ids[::4], mask[::4]  # the three distinct prompts
    kw = {"max_new_tokens": 10, "eos_token_ids": [EOS, 2, 3], "pad_token_id": PAD}
    plain = sample(net, ids, mask, greedy=True, lean=False, **kw)  # the model's forward
    for lean in (True, False):
        shared = sample(net, uniq, umask, greedy=True, lean=lean, repeat=4, **kw)
        assert torch.equal(shared.prompt_ids, ids) and torch.equal(shared.prompt_mask, mask)
        assert torch.equal(shared.response_ids, plain.response_ids), lean
        assert torch.allclose(shared.logprobs, plain.logprobs, atol=1e-5), lean
    g = torch.Generator().manual_seed(4)
    r = sample(net, uniq, umask, generator=g, repeat=4, **kw)
    full = sequence_logprobs(net, r)
    m = r.response_mask.bool()
    assert torch.allclose(full[m], r.logprobs[m], atol=1e-5)
    assert r.response_ids.size(0) == 12 and not torch.equal(r.response_ids[0], r.response_ids[1])


def test_other_architectures_decode_with_their_own_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    from dapo_cli.decoder import LeanDecoder

    torch.manual_seed(0)
    net = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4)).eval()
    assert not LeanDecoder.supports(net)
    ids, mask = prompts()
    kw = {"max_new_tokens": 6, "eos_token_ids": [EOS], "pad_token_id": PAD}
    r = sample(net, ids[::4], mask[::4], repeat=2, generator=torch.Generator().manual_seed(0), **kw)
    m = r.response_mask.bool()
    assert r.response_ids.size(0) == 6
    assert torch.allclose(sequence_logprobs(net, r)[m], r.logprobs[m], atol=1e-5)


def test_sampling_keeps_sdpa_off_cudnn_on_cuda(model, monkeypatch):
    """On CUDA, sampling runs without SDPA's cuDNN backend (a plan per new shape); elsewhere,
    and afterwards, the backends are left as they were."""
    from dapo_cli import rollout

    cuda = torch.backends.cuda
    before = (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled())
    with rollout.attention_backends(torch.device("cuda")):
        assert not cuda.cudnn_sdp_enabled()
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled()
    with rollout.attention_backends(torch.device("cpu")):
        assert cuda.cudnn_sdp_enabled() == before[0]
    assert (
        cuda.cudnn_sdp_enabled(),
        cuda.flash_sdp_enabled(),
        cuda.mem_efficient_sdp_enabled(),
    ) == before

    seen = []
    real = rollout.attention_backends
    monkeypatch.setattr(rollout, "attention_backends", lambda d: seen.append(d) or real(d))
    ids, mask = prompts()
    sample(model, ids, mask, max_new_tokens=2, eos_token_ids=[EOS], pad_token_id=PAD)
    assert seen == [ids.device]


def test_a_prompt_run_once_for_its_rows_gives_the_same_logprobs_and_gradients(model):
    """``sequence_logprobs(groups=...)``: each distinct prompt through the model once, its KV
    cache indexed out to its rows (in any order, some rows of a prompt absent), equals one
    full pass per row, in values and in the gradient of every parameter."""
    ids, mask = prompts()  # 3 prompts (differently left-padded) x 4 rows
    r = sample(model, ids, mask, max_new_tokens=9, eos_token_ids=[EOS, 2], pad_token_id=PAD,
               temperature=0.7, generator=torch.Generator().manual_seed(3))  # fmt: skip
    rows = [5, 0, 1, 9, 11, 4, 10]
    sub = r.select(rows)

    def run(groups):
        model.zero_grad()
        logp, entropy = sequence_logprobs(model, sub, 0.7, return_entropy=True, groups=groups)
        (
            logp * sub.response_mask * torch.linspace(-1, 1, logp.numel()).view_as(logp)
        ).sum().backward()
        return logp.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = run(None)
    shared = run(torch.tensor(rows) // 4)
    m = sub.response_mask.bool()
    assert torch.allclose(plain[0][m], shared[0][m], atol=1e-5)
    assert torch.allclose(plain[1][m], shared[1][m], atol=1e-5)
    for name, g in plain[2].items():
        assert torch.allclose(g, shared[2][name], atol=1e-6, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in plain[2].values())
