"""Tiny random causal LMs of several architectures, built offline, saved the way real models
come: a Hugging Face folder (with the quirks real checkpoints have) or a GGUF file."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from dapo_cli.models import build_tokenizer

# Shapes small enough to train in a test; head_dim 16, two KV heads (grouped-query attention).
_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256,
)  # fmt: skip


def tiny_model(arch: str, folder: Path, *, tie: bool = True, pad: bool = True,
               chat_template: bool = True, eos_ids: int = 1, seed: int = 0) -> Path:  # fmt: skip
    """A random ``arch`` model ("llama", "qwen2", "mistral") with this project's tokenizer,
    saved to ``folder``. ``pad=False`` drops the pad token, ``chat_template=False`` the chat
    template, ``eos_ids=2`` gives generation_config two EOS ids (``<|endoftext|>`` and
    ``<|im_start|>``, which no end-of-turn rule knows), ``tie=False`` unties the output
    layer from the embeddings."""
    tokenizer = build_tokenizer()
    if not pad:
        tokenizer.pad_token = None
    if not chat_template:
        tokenizer.chat_template = None
    config = AutoConfig.for_model(
        arch, vocab_size=len(tokenizer), tie_word_embeddings=tie, **_SHAPE,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_start|>")][:eos_ids]
    model.generation_config.eos_token_id = eos if eos_ids > 1 else eos[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's order of the rotary halves in q/k (convert_hf_to_gguf.py's ``permute``)."""
    halves = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
    return halves.swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder: Path, file: Path) -> Path:
    """The Llama model in ``folder`` as an F32 GGUF file, written as llama.cpp's converter
    writes one (tensor names, q/k permutation, BPE tokenizer, chat template)."""
    import gguf

    model = AutoModelForCausalLM.from_pretrained(folder)
    c = model.config
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["id"]: t["content"] for t in tok["added_tokens"]}
    tokens = [added.get(i, t) for t, i in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    types = [gguf.TokenType.CONTROL if i in added else gguf.TokenType.NORMAL
             for i in range(len(tokens))]  # fmt: skip
    config = json.loads((folder / "tokenizer_config.json").read_text())
    template = folder / "chat_template.jinja"

    w = gguf.GGUFWriter(str(file), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tok["model"]["vocab"].get(config["eos_token"], 0))
    w.add_add_bos_token(False)
    if template.is_file():
        w.add_chat_template(template.read_text())
    sd = {k: v.float() for k, v in model.state_dict().items()}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}  # fmt: skip
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    for i in range(c.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, c.num_attention_heads)
            elif gg == "attn_k":
                t = _permute(t, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", t.numpy())
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return file
