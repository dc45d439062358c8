"""The embedded tiny default (tokenizer + model built offline) and model loading."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from dapo_cli import models
from dapo_cli.errors import DapoError
from dapo_cli.paths import templates_dir

ROUND_TRIP_TEXTS = [
    "Hello world",
    " leading space",
    "  two leading spaces and  double   gaps",
    "trailing spaces   ",
    "line one\nline two\n\n\nafter blank lines\r\n",
    "tab\tseparated\t\tcolumns",
    "12345",
    "What is 3.14 * -27? Answer: -84.78",
    "café, naïve, Ελληνικά, 日本語, emoji 😀👍🏽",
    "def add(a, b):\n    if a:\n\treturn a + b\n    return b  # comment\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "don't we'll I'M it's",
    "",
]


@pytest.fixture(scope="session")
def corpus():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # task types still being written are skipped
        return models.tokenizer_corpus()


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return models.build_tokenizer(corpus)


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return models.embedded_base("tiny-1m", tmp_path_factory.mktemp("home"))


# --- configs and parameter counts ------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny-1m", "tiny-10m"])
def test_template_is_a_qwen2_config_with_tied_embeddings(size):
    settings = json.loads((templates_dir() / "models" / f"{size}.json").read_text())
    config = Qwen2Config(**settings)
    assert config.model_type == "qwen2"
    assert config.tie_word_embeddings is True
    assert config.vocab_size == models.DEFAULT_VOCAB_SIZE
    assert size in models.embedded_sizes()


@pytest.mark.parametrize("size, expected", [("tiny-1m", 1_017_984), ("tiny-10m", 10_103_040)])
def test_parameter_counts(tokenizer, size, expected):
    model = models.build_tiny_model(size, tokenizer)
    assert models.count_parameters(model) == expected  # embedding counted once (tied)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.vocab_size == len(tokenizer)


def test_unknown_size_is_a_user_error(tokenizer):
    with pytest.raises(DapoError, match="tiny-1m"):
        models.build_tiny_model("tiny-7b", tokenizer)


# --- the tokenizer ---------------------------------------------------------------------


def test_tokenizer_vocabulary_and_special_tokens(tokenizer):
    assert len(tokenizer) == models.DEFAULT_VOCAB_SIZE
    assert tokenizer.convert_tokens_to_ids(list(models.SPECIAL_TOKENS)) == [0, 1, 2]
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.padding_side == "left"
    # the special tokens are single tokens, never split into bytes
    assert tokenizer.encode("<|im_start|>x<|im_end|>")[0] == 1
    assert tokenizer.encode("<|im_start|>x<|im_end|>")[-1] == 2


def test_tokenizer_splits_digits_and_falls_back_to_bytes(tokenizer):
    assert len(tokenizer.encode("12345")) == 5
    assert len(tokenizer.encode("\x00\x7f")) == 2  # bytes never seen in training
    emoji = tokenizer.encode("😀")
    assert 1 <= len(emoji) <= 4 and tokenizer.decode(emoji) == "😀"


def test_corpus_covers_every_task_type_that_generates(corpus):
    for marker in ("Answer:", "Give your final answer", "\t", "~"):
        assert any(marker in text for text in corpus), marker


def test_corpus_skips_a_broken_task_type_with_a_warning(monkeypatch):
    def fake_generate(n, task_types, **kwargs):
        if task_types == ["math"]:
            raise RuntimeError("broken generator")
        return [{"prompt": f"{task_types[0]} prompt", "answer": "x", "verify": {}}]

    monkeypatch.setattr(models, "generate_dataset", fake_generate)
    with pytest.warns(UserWarning, match="math"):
        texts = models.tokenizer_corpus(samples_per_type=1)
    assert not any("math prompt" in t for t in texts)
    assert any("reasoning prompt\nAnswer: x" in t for t in texts)


@pytest.mark.parametrize("with_model_config", [False, True])
def test_tokenizer_round_trips_through_save_and_autotokenizer(
    tokenizer, tmp_path, with_model_config
):
    # With a qwen2 config.json beside it, transformers 5 rebuilds the tokenizer as a
    # Qwen2Tokenizer from vocab + merges; without, it reads tokenizer.json. Both must match.
    tokenizer.save_pretrained(tmp_path)
    if with_model_config:
        models.tiny_model_config("tiny-1m", tokenizer).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    if with_model_config:
        assert type(reloaded).__name__.startswith("Qwen2Tokenizer")
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    for text in ROUND_TRIP_TEXTS:
        ids = tokenizer.encode(text)
        assert reloaded.encode(text) == ids, text
        assert reloaded.decode(ids) == tokenizer.decode(ids) == text
    assert reloaded.eos_token == reloaded.pad_token == "<|endoftext|>"
    assert models.format_prompt(reloaded, "hi", system="be brief") == models.format_prompt(
        tokenizer, "hi", system="be brief"
    )


def test_building_twice_gives_the_same_tokenizer_and_weights(corpus, tokenizer):
    again = models.build_tokenizer(corpus)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.encode(ROUND_TRIP_TEXTS[8]) == tokenizer.encode(ROUND_TRIP_TEXTS[8])

    state_before = torch.random.get_rng_state()
    first = models.build_tiny_model("tiny-1m", tokenizer, seed=3).state_dict()
    second = models.build_tiny_model("tiny-1m", tokenizer, seed=3).state_dict()
    other = models.build_tiny_model("tiny-1m", tokenizer, seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state_before)  # global RNG untouched
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


# --- the embedded folder ---------------------------------------------------------------


def test_embedded_base_is_built_once_and_reused(embedded_dir, monkeypatch):
    assert embedded_dir.name == "tiny-1m" and embedded_dir.parent.name == "embedded"
    stamp = (embedded_dir / "config.json").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached embedded model")

    monkeypatch.setattr(models, "build_tiny_model", no_rebuild)
    monkeypatch.setattr(models, "build_tokenizer", no_rebuild)
    assert models.embedded_base("tiny-1m", embedded_dir.parent.parent) == embedded_dir
    assert (embedded_dir / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in embedded_dir.parent.iterdir()] == ["tiny-1m"]  # no staging left


def test_embedded_root_defaults_to_dapo_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DAPO_HOME", str(tmp_path))
    assert models.models_root() == tmp_path
    monkeypatch.delenv("DAPO_HOME")
    assert str(models.models_root()) == "models"


def test_saved_embedded_model_loads_with_plain_transformers_and_generates(embedded_dir):
    model = AutoModelForCausalLM.from_pretrained(embedded_dir)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.max_position_embeddings == tokenizer.model_max_length == 1024
    prompts = [models.format_prompt(tokenizer, p) for p in ("What is 2 + 2?", "Hi")]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padded
    with torch.no_grad():
        logits = model(**batch).logits  # (B, T, V)
    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    torch.manual_seed(0)
    prompt_len = batch["input_ids"].shape[1]
    out = model.generate(**batch, max_new_tokens=5, do_sample=True)  # (B, T + <=5)
    assert out.shape[0] == 2 and prompt_len < out.shape[1] <= prompt_len + 5


@pytest.mark.parametrize("name", [None, "tiny-1m"])
def test_load_model_and_tokenizer_gives_the_embedded_default(embedded_dir, name):
    model, tokenizer = models.load_model_and_tokenizer(
        name, cache_dir=embedded_dir.parent.parent, device="cpu", dtype="auto"
    )
    assert model.device.type == "cpu" and model.dtype == models.resolve_dtype("auto", model.device)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == 0
    assert model.config.vocab_size == len(tokenizer)


def test_load_model_from_a_local_folder(embedded_dir):
    model, tokenizer = models.load_model_and_tokenizer(str(embedded_dir), device="cpu")
    assert model.config.num_hidden_layers == 4 and len(tokenizer) == 1024


# --- user errors -----------------------------------------------------------------------


def test_missing_local_path_is_a_one_line_error(tmp_path):
    with pytest.raises(DapoError, match="does not exist") as info:
        models.load_model_and_tokenizer(str(tmp_path / "no" / "such-model"))
    assert "\n" not in str(info.value)


def test_folder_without_a_model_is_a_user_error(tmp_path):
    with pytest.raises(DapoError, match="no config.json"):
        models.load_model_and_tokenizer(str(tmp_path))


def test_hub_id_without_the_hub_is_a_user_error(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DapoError, match="hub is unreachable; pass a local path") as info:
        models.load_model_and_tokenizer("dapo-test/no-such-model", device="cpu")
    assert "'dapo-test/no-such-model'" in str(info.value)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, torch.bfloat16),  # this project's EPYC
        ({"avx512_bf16": False, "amx_bf16": True}, torch.bfloat16),  # Sapphire Rapids
        ({"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, torch.float32),
        ({}, torch.float32),  # a CPU torch reports nothing about
    ],
)
def test_auto_dtype_on_a_cpu_is_bf16_only_where_it_computes_in_bf16(monkeypatch, flags, expected):
    """bf16 matmuls run ~4x fp32's rate with AVX512-BF16/AMX and far below it without."""
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: flags)
    assert models.resolve_dtype("auto", torch.device("cpu")) == expected
    assert models.resolve_dtype("float32", torch.device("cpu")) == torch.float32


def test_auto_dtype_is_fp32_when_torch_cannot_say(monkeypatch):
    monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability")
    assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("device", ["tpu", "cuda:99"])
def test_unknown_device_is_a_user_error(device):
    with pytest.raises(DapoError, match="device"):
        models.resolve_device(device)


def test_device_and_dtype_resolution():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_dtype("bf16") == torch.bfloat16
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert models.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DapoError, match="dtype"):
        models.resolve_dtype("float8")


# --- prompts ---------------------------------------------------------------------------


def test_format_prompt_uses_the_chat_template(tokenizer):
    assert models.has_chat_template(tokenizer)
    assert models.format_prompt(tokenizer, "2+2?", system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_format_prompt_without_a_chat_template_is_the_plain_prompt(corpus):
    plain = models.build_tokenizer(corpus[:50], vocab_size=300)
    plain.chat_template = None
    assert not models.has_chat_template(plain)
    assert models.format_prompt(plain, "2+2?") == "2+2?"
    assert models.format_prompt(plain, "2+2?", system="Be brief.") == "Be brief.\n\n2+2?"


def test_prepare_tokenizer_sets_a_pad_token_and_left_padding(corpus):
    tok = models.build_tokenizer(corpus[:50], vocab_size=300)
    tok.pad_token = None
    tok.padding_side = "right"
    models.prepare_tokenizer(tok)
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"


def test_gradient_checkpointing_engages_on_an_eval_mode_policy(embedded_dir):
    """transformers checkpoints a layer only in training mode; the policy is in eval mode, so
    ``enable_gradient_checkpointing`` must switch the layers on: far fewer activations are
    kept for the backward, the gradients are the same, and no dropout is switched on."""
    model = AutoModelForCausalLM.from_pretrained(embedded_dir).eval()
    ids = torch.randint(0, 500, (4, 48))

    def saved_bytes_and_grads():
        kept = [0]

        def pack(t):
            kept[0] += t.numel() * t.element_size()
            return t

        model.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, use_cache=False).logits.logsumexp(-1).mean()
        loss.backward()
        return kept[0], [p.grad.clone() for p in model.parameters()]

    plain, grads = saved_bytes_and_grads()
    models.enable_gradient_checkpointing(model)
    checkpointed, grads_ckpt = saved_bytes_and_grads()
    assert checkpointed < plain / 4
    for g, h in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7)
    assert not model.training and not model.model.layers[0].self_attn.training
