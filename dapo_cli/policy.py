"""A policy: a causal LM with its tokenizer, and how to turn prompts into token ids for it
(the prompt template first when one is set, then the chat template when the tokenizer has
one, plain text otherwise; which ids stop a response). Training, sft, eval and chat all
format prompts here, so a model sees the same text in each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dapo_cli.config import PROMPT_PLACEHOLDER
from dapo_cli.models import format_prompt, load_model_and_tokenizer

# Tokens that end an assistant turn in the chat formats we know, besides the tokenizer's EOS.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>")


@dataclass
class Policy:
    model: Any
    tokenizer: Any
    system: str | None = None
    template: str | None = None  # data.prompt_template: wraps each prompt (apply_template)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def stop_ids(self) -> list[int]:
        """EOS first (what a supervised target ends with), then the other EOS ids of the
        model's generation config (instruct models list several: end of text, end of turn),
        then the end-of-turn markers of the chat formats we know."""
        ids = [int(self.tokenizer.eos_token_id)]
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if configured is not None:
            for i in [configured] if isinstance(configured, int) else configured:
                if int(i) not in ids:
                    ids.append(int(i))
        vocab = self.tokenizer.get_vocab()
        ids += [vocab[t] for t in _END_OF_TURN if t in vocab and vocab[t] not in ids]
        return ids

    def format_prompt(self, prompt: str) -> str:
        return format_prompt(self.tokenizer, apply_template(self.template, prompt), self.system)

    def encode(self, prompts: list[str], repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and mask, each prompt repeated ``repeat`` times. (B, P)"""
        enc = self.tokenizer(
            [self.format_prompt(p) for p in prompts],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )
        ids = enc["input_ids"].repeat_interleave(repeat, dim=0).to(self.device)
        mask = enc["attention_mask"].repeat_interleave(repeat, dim=0).to(self.device)
        return ids, mask

    def prompt_ids(self, prompt: str) -> list[int]:
        """The formatted prompt's token ids, unpadded (what ``encode`` pads)."""
        return self.tokenizer(self.format_prompt(prompt), add_special_tokens=False)["input_ids"]

    def prompts_ids(self, prompts: list[str]) -> list[list[int]]:
        """Each formatted prompt's token ids, unpadded (what a ``rollout.Sampler`` takes)."""
        texts = [self.format_prompt(p) for p in prompts]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def prompt_length(self, prompt: str) -> int:
        return len(self.prompt_ids(prompt))


def apply_template(template: str | None, prompt: str) -> str:
    """``prompt`` in ``template`` (a checked ``data.prompt_template``; None: as it is). The
    placeholder is replaced, not ``str.format``-ed: the template's other braces (``\\boxed{}``)
    stay as written, and so do the prompt's."""
    return prompt if template is None else template.replace(PROMPT_PLACEHOLDER, prompt)


def load_policy(name_or_path=None, **kwargs) -> Policy:
    """``models.load_model_and_tokenizer`` wrapped as a Policy (model in eval mode: no
    dropout, so sampling and training see the same function)."""
    model, tokenizer = load_model_and_tokenizer(name_or_path, **kwargs)
    model.eval()
    return Policy(model, tokenizer)
