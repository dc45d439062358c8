"""The model the optimiser updates, when it is not simply the policy's model: FSDP and mixed
precision.

**Mixed precision.** A policy loaded in bf16 (``model.dtype=auto`` on a capable GPU) samples in
bf16, but its weights are not trained in bf16: an AdamW step of lr 1e-6 on a weight of size
0.02 is far below bf16's resolution there (about 1e-4) and would be rounded away, so nearly
no weight would ever move. The trained model is an fp32 copy (master weights) whose forward
runs under autocast in the policy's dtype; the policy's model is refreshed from it after
every update, and checkpoints hold the fp32 weights.

**FSDP**: PyTorch's ``fully_shard`` ("FSDP2"), chosen by ``accelerate launch`` with an FSDP
config or by ``train.parallelism=fsdp`` under ``torchrun``. The model that is trained is a
copy of the policy's model, sharded over the ranks: each rank keeps 1/world of its
parameters, gradients and AdamW moments, the forward all-gathers one decoder layer at a
time and the backward reduce-scatters the gradients (summed, not averaged: the loss already
divides by the global token count). Rollout and evaluation keep using the policy's plain
model (full weights on every rank), which is refreshed from the trained copy after every
update, as verl refreshes its rollout engine from its FSDP actor. So rollout stays free of
collectives (ranks may decode for different numbers of steps), and checkpoints stay
ordinary ``save_pretrained`` folders.

Memory per rank, in units of the model's fp32 weights: DDP holds 4 (weights, gradients, two
AdamW moments); FSDP holds 1 (the rollout copy; 0.5 in bf16) + 4/world, plus one gathered
layer at a time; with ``fsdp_offload_params`` on a GPU the 4/world lie in CPU memory. One
process with an FSDP config (``accelerate launch --num_processes 1``) runs FSDP over a group of
one: a single GPU can then train a model whose fp32 weights, gradients and AdamW state exceed
its memory, as long as the rollout copy fits (and, while the model is sharded at the start,
one fp32 copy beside it).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import os
from typing import Any

import torch
import torch.distributed as td
from torch import nn

from dapo_cli.errors import DapoError
from dapo_cli.models import enable_gradient_checkpointing
from dapo_cli.scale.distributed import Dist

_TRUE = ("1", "true", "yes")


def wants_fsdp(parallelism: str, dist: Dist) -> bool:
    """FSDP for this run? ``auto`` follows ``accelerate launch`` (its FSDP config sets
    ACCELERATE_USE_FSDP=true in every process's environment). With one process (``accelerate
    launch --num_processes 1`` with an FSDP config, or ``train.parallelism=fsdp``) nothing is
    divided, but the layer-by-layer units, mixed-precision policy and, on a GPU,
    ``fsdp_offload_params`` (weights, gradients and AdamW state in CPU memory, computed on the
    GPU a layer at a time) apply as with several, as in accelerate itself."""
    if parallelism == "auto":
        return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in _TRUE
    return parallelism == "fsdp"


def fsdp_options() -> dict[str, Any]:
    """The accelerate FSDP settings that apply here, read from the environment that
    ``accelerate launch`` writes (``fsdp_version``, ``fsdp_reshard_after_forward``,
    ``fsdp_offload_params``, ``fsdp_activation_checkpointing``); the others (wrap policy,
    state-dict type, prefetch) have fixed values here: every decoder layer is its own unit and
    checkpoints are always full ``save_pretrained`` folders."""
    version = os.environ.get("FSDP_VERSION", "2")
    if version != "2":
        raise DapoError(
            f"FSDP version {version} requested; dapo train supports FSDP2 only: set "
            "fsdp_version: 2 in the accelerate config (or --fsdp_version 2)"
        )
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    if reshard not in _TRUE + ("false", "0", "no", "full_shard", "shard_grad_op", "no_reshard"):
        raise DapoError(f"FSDP_RESHARD_AFTER_FORWARD={reshard!r}: expected true or false")
    return {
        "reshard_after_forward": reshard in _TRUE + ("full_shard",),
        "offload_params": os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() in _TRUE,
        "activation_checkpointing": (
            os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() in _TRUE
        ),
    }


def _layer_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as units: those whose class the model names as not to be split
    (``_no_split_modules``: the decoder layers of every transformers causal LM)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def prepare_trained(
    model: nn.Module,
    dist: Dist,
    *,
    parallelism: str = "ddp",
    gradient_checkpointing: bool = False,
    fp32_weights: nn.Module | None = None,
) -> nn.Module:
    """The module the optimiser will update: ``model`` itself (fp32, no FSDP), an fp32 copy
    (``model`` in bf16/fp16), or a sharded copy (FSDP, when ``parallelism`` asks for it: the
    default never shards; ``auto`` follows accelerate's environment, see ``wants_fsdp``).
    ``fp32_weights``: a float32 load of the same checkpoint, used for the master weights
    instead of upcasting ``model``'s (a resumed run keeps the precision it saved). A LoRA
    model trains itself: only its adapters train, and peft keeps them in fp32."""
    if getattr(model, "peft_config", None):
        if wants_fsdp(parallelism, dist):
            raise DapoError("LoRA (lora.r > 0) with FSDP is not supported; use DDP")
        if gradient_checkpointing:
            enable_gradient_checkpointing(model.get_base_model())
        return model
    low = _dtype(model) != torch.float32
    if wants_fsdp(parallelism, dist):
        return shard_for_training(
            fp32_weights if low and fp32_weights is not None else model,
            dist,
            gradient_checkpointing=gradient_checkpointing,
            compute_dtype=_dtype(model) if low else None,
        )
    trained = model
    if low:
        trained = fp32_weights if fp32_weights is not None else copy.deepcopy(model).float()
    if gradient_checkpointing:
        enable_gradient_checkpointing(trained)
    return trained


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def compute_context(trained: nn.Module, rollout: nn.Module):
    """Autocast to the rollout model's dtype for a forward of fp32 master weights (FSDP casts
    by itself, with its mixed-precision policy); no-op otherwise."""
    low = _dtype(rollout)
    if trained is rollout or is_sharded(trained) or low == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(next(trained.parameters()).device.type, dtype=low)


def shard_for_training(
    model: nn.Module,
    dist: Dist,
    *,
    gradient_checkpointing: bool = False,
    compute_dtype: torch.dtype | None = None,
):
    """A sharded copy of ``model`` to train (the original is left as the rollout model); with
    ``compute_dtype`` the shards are fp32 and each gathered layer is cast to it (gradients
    are reduced in fp32)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    opts = fsdp_options()
    device = next(model.parameters()).device
    if not dist.active and not td.is_initialized():
        _single_process_group(device)
    train = copy.deepcopy(model)
    if compute_dtype is not None:
        train.float()  # fp32 shards; compute in compute_dtype
    if gradient_checkpointing or opts["activation_checkpointing"]:
        enable_gradient_checkpointing(train)
    mesh = init_device_mesh(device.type, (dist.world,))
    offload = CPUOffloadPolicy() if opts["offload_params"] and device.type != "cpu" else None
    kwargs = {
        "mesh": mesh,
        "reshard_after_forward": opts["reshard_after_forward"],
        "offload_policy": offload or OffloadPolicy(),
        "mp_policy": MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
    }
    for unit in _layer_units(train):
        fully_shard(unit, **kwargs)
    fully_shard(train, **kwargs)
    for unit in train.modules():  # sum across ranks (not average): the loss's denominator is
        if isinstance(unit, FSDPModule):  # already the global token count, as with DDP here
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return train


def _single_process_group(device: torch.device) -> None:
    """A process group of one (FSDP's device mesh needs one), torn down at exit."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    td.init_process_group(backend, store=td.HashStore(), rank=0, world_size=1)
    atexit.register(lambda: td.is_initialized() and td.destroy_process_group())


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A (possibly sharded or replicated) tensor's whole value; collective when sharded."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def sync_weights(train: nn.Module, rollout: nn.Module) -> None:
    """Copy the trained weights into the rollout model (every rank gathers every parameter;
    collective, so all ranks call it at the same point)."""
    target = dict(rollout.named_parameters())
    for name, p in train.named_parameters():
        target[name].copy_(full_value(p).to(target[name].device, target[name].dtype))


def master_weights(trained: nn.Module, rollout: nn.Module) -> dict[str, torch.Tensor] | None:
    """The fp32 master weights, for the trainer state (resume continues from them), or None
    when the checkpoint's model weights are already all there is to them (the policy's own
    model trains, or FSDP in fp32, whose rollout copy is refreshed to the same values).
    Collective when ``trained`` is sharded: every rank calls it; rank 0 receives the state.

    Checkpoints hold the rollout model, the function that was sampled and rewarded, not the
    master weights: under mixed precision an update below the low dtype's resolution moves
    a master weight without changing any forward pass, so such moves accumulate unseen (and
    unchecked by any gradient) and the master weights run in fp32 are another function. On
    SmolLM2-135M after 60 bf16 steps at lr 5e-6, held-out accuracy was 46% from the rollout
    weights and 0% from the masters run in fp32, although they differ by 0.04% (rms)."""
    if trained is rollout:
        return None
    if not is_sharded(trained):
        return {k: v.detach().to("cpu", copy=True) for k, v in trained.state_dict().items()}
    if _dtype(rollout) == torch.float32:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(
        trained, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    names = {n for n, _ in rollout.named_parameters()} | {n for n, _ in rollout.named_buffers()}
    return {k: v for k, v in state.items() if k in names}


def _names_in_optimizer_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimiser state in ``optimizer.state_dict()``'s own format (parameters by
    index), so checkpoints of sharded and unsharded runs are interchangeable. Collective
    when ``model`` is sharded: every rank calls it (rank 0's result is the one to save)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not full:  # ranks other than 0 receive nothing (cpu_offload gathers on rank 0 only)
        return {}
    index = {n: i for i, n in enumerate(_names_in_optimizer_order(model, optimizer))}
    return {
        "state": {index[n]: v for n, v in full.get("state", {}).items()},
        "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]
        ],
    }


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state` (every rank passes the whole state it read)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _names_in_optimizer_order(model, optimizer)
    full = {
        "state": {names[i]: v for i, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
