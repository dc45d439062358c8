"""A lean decode step for Llama-family causal LMs (Qwen2, Llama): one new token per row over
a preallocated KV cache, for ``rollout.sample``.

Hugging Face's per-token forward rebuilds the attention mask, concatenates every layer's
cache (a copy of the whole cache per token) and repeats the key/value heads for grouped-query
attention (another copy) at every step. Here the cache is allocated once, each step writes one
column in place, and grouped-query attention reads the shared key/value heads as they are.
The model's own modules do everything else (projections, norms, MLP, rotary embedding, LM
head), so the numbers are those of the model's forward up to float rounding; the prefill is
the model's own forward, whose cache is copied in. Models of other architectures use the
model's forward for every step (``LeanDecoder.supports``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FAMILIES = ("qwen2", "llama")


class LeanDecoder:
    """Decode state for ``rows`` sequences: keys/values (layers, rows, kv heads, capacity, D)
    and which cache columns each row may attend to."""

    @staticmethod
    def supports(model) -> bool:
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in _FAMILIES:
            return False
        if getattr(cfg, "use_sliding_window", False):
            return False
        inner = getattr(model, "model", None)
        return all(
            hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")
        ) and hasattr(model, "lm_head")

    def __init__(self, model, past, attention_mask: torch.Tensor, capacity: int, repeat: int = 1):
        """``past``: the cache of the model's prefill forward over N prompts;
        ``attention_mask``: (N, P) its mask; ``capacity``: P + the new tokens to come;
        ``repeat``: rows per prompt (B = N · repeat), all starting from the prompt's cache."""
        self.model = model
        cfg = model.config
        self.layers = model.model.layers
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.scaling = attn.scaling
        keys = [past.layers[i].keys for i in range(len(self.layers))]  # each (B, Hkv, P, D)
        values = [past.layers[i].values for i in range(len(self.layers))]
        N, _, P, D = keys[0].shape
        B = N * repeat
        self.k = keys[0].new_zeros(len(self.layers), B, self.n_kv, capacity, D)
        self.v = torch.zeros_like(self.k)
        for i in range(len(self.layers)):
            self.k[i, :, :, :P] = keys[i].repeat_interleave(repeat, 0)
            self.v[i, :, :, :P] = values[i].repeat_interleave(repeat, 0)
        self.valid = torch.zeros(B, capacity, dtype=torch.bool, device=self.k.device)
        self.valid[:, :P] = attention_mask.bool().repeat_interleave(repeat, 0)
        self.length = P  # columns written

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` (finished rows leave the batch)."""
        self.k = self.k[:, keep]
        self.v = self.v[:, keep]
        self.valid = self.valid[keep]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, live: torch.Tensor):
        """Logits (b, V) after feeding ``tokens`` (b,) at ``positions`` (b, 1); rows where
        ``live`` is False are padding (their column is never attended to)."""
        model, t = self.model, self.length
        self.valid[:, t] = live
        h = model.model.embed_tokens(tokens[:, None])  # (b, 1, H)
        cos, sin = model.model.rotary_emb(h, positions)  # (b, 1, D) each
        cos, sin = cos[:, None], sin[:, None]  # (b, 1, 1, D)
        b = tokens.size(0)
        mask = self.valid[:, None, None, : t + 1]  # (b, 1, 1, t+1)
        group = self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)  # (b, 1, H)
            q = attn.q_proj(x).view(b, self.n_heads, 1, self.head_dim)
            k = attn.k_proj(x).view(b, self.n_kv, 1, self.head_dim)
            v = attn.v_proj(x).view(b, self.n_kv, 1, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k[i, :, :, t : t + 1] = k
            self.v[i, :, :, t : t + 1] = v
            # grouped-query attention without copying keys/values: the `group` query heads
            # of one key/value head become that head's query rows
            qg = q.view(b, self.n_kv, group, self.head_dim)
            out = F.scaled_dot_product_attention(
                qg,
                self.k[i, :, :, : t + 1],
                self.v[i, :, :, : t + 1],
                attn_mask=mask,
                scale=self.scaling,
            )  # fmt: skip  (b, Hkv, group, D)
            h = h + attn.o_proj(out.reshape(b, 1, self.n_heads * self.head_dim))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        self.length = t + 1
        return model.lm_head(model.model.norm(h))[:, -1, :]  # (b, V)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
