"""LoRA through peft: adapt a policy, load a saved adapter, merge one into an ordinary model.

With ``lora.r > 0`` the policy's model is wrapped by ``peft.get_peft_model``: every adapted
linear layer computes ``W x + (alpha / r) · B A x`` with ``A`` (r, in) and ``B`` (out, r)
trainable and ``W`` frozen, ``B`` starting at zero (so the first rollout is the base model's).
peft injects the adapters into the model's own modules, so sampling, the update and the
KV-cache decoder run the same code as without LoRA; the optimiser sees only ``A`` and ``B``
(the parameters that require grad). Checkpoints hold the adapter alone
(``adapter_config.json`` naming its base, ``adapter_model.safetensors``) and the tokenizer.

Loading an adapter folder gives its base with the adapter merged in (``merge_and_unload``:
eval, chat, a new run from it, ``dapo merge``), or, to resume a run, the base with the
adapter still trainable.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from dapo_cli.config import LoraSettings
from dapo_cli.errors import DapoError, first_line

ADAPTER_CONFIG = "adapter_config.json"

# Noise a user cannot act on: peft asks transformers by a name transformers deprecates, and
# warns on every save that a base given as a .gguf file has no config.json beside it.
warnings.filterwarnings("ignore", r".*is_gradient_checkpointing.*deprecated", FutureWarning)
warnings.filterwarnings("ignore", r"Could not find a config file in .*\.gguf", UserWarning)


def is_adapter(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a peft adapter."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_lora(model: Any) -> bool:
    """Whether ``model`` is a peft-wrapped model (its adapters are what trains)."""
    return bool(getattr(model, "peft_config", None))


def base_of(adapter: str | os.PathLike) -> str:
    """The base model an adapter folder was trained on (a local path or a Hub id)."""
    file = Path(adapter) / ADAPTER_CONFIG
    try:
        base = json.loads(file.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise DapoError(f"{file} is unreadable: {exc}") from None
    if not base:
        raise DapoError(f"{file} does not name its base model (base_model_name_or_path)")
    return str(base)


def add_adapters(model, settings: LoraSettings, base: str, seed: int):
    """``model`` wrapped with fresh LoRA adapters (``settings``), their random ``A`` drawn
    from ``seed`` (the global random stream is left as it was); ``base``: where the
    unadapted weights can be loaded from again, recorded in every saved adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules.strip()
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=0.0,  # the policy samples and trains as one function (no dropout)
        target_modules=targets if targets == "all-linear" else _names(targets),
        task_type="CAUSAL_LM",
    )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            wrapped = get_peft_model(model, config)
    except ValueError as exc:  # e.g. a target module name the model does not have
        raise DapoError(f"lora.target_modules={targets!r}: {first_line(exc)}") from None
    wrapped.peft_config["default"].base_model_name_or_path = base
    return wrapped


def load_adapted(adapter: Path, base_model, *, trainable: bool):
    """``base_model`` with the adapter in folder ``adapter``: merged into its weights (an
    ordinary transformers model), or still separate and trainable (to resume a run)."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(base_model, adapter, is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise DapoError(f"could not load the adapter in {adapter}: {first_line(exc)}") from None
    return model if trainable else model.merge_and_unload()


def merge(adapter: str | os.PathLike, output: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write the adapter's base with the adapter merged in to ``output``: an ordinary model
    folder (weights, config, tokenizer) that loads without peft. Returns ``output``."""
    from dapo_cli.models import load_model_and_tokenizer
    from dapo_cli.scale.checkpoint import save_checkpoint

    if not is_adapter(adapter):
        raise DapoError(f"{adapter} is not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    model, tokenizer = load_model_and_tokenizer(adapter, device="cpu", dtype=dtype)
    return save_checkpoint(output, model, tokenizer)


def trainable_share(model) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _names(targets: str) -> list[str]:
    return [t.strip() for t in targets.split(",") if t.strip()]
