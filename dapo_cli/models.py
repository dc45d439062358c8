"""Loading Hugging Face causal LMs, and building the embedded tiny default offline.

The embedded default is a randomly initialised Qwen2-architecture model (config in
``templates/models/<size>.json``) with a byte-level BPE tokenizer trained here, on text from
the task generators. It needs no download: :func:`embedded_base` builds it once into
``<root>/embedded/<size>/`` (root: ``$DAPO_HOME``, else ``./models``) and reuses it after.

The tokenizer uses Qwen2's exact pipeline (NFC, Qwen2's split regex with digits split one
by one, ByteLevel without prefix space), so every byte is encodable and a saved copy
reloads identically: transformers 5 rebuilds a Qwen2 tokenizer from vocab + merges with
that pipeline when a folder's config says ``qwen2``, rather than reading ``tokenizer.json``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import string
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.modeling_layers import GradientCheckpointingLayer

from dapo_cli.datagen import generate_dataset
from dapo_cli.errors import DapoError, first_line
from dapo_cli.paths import templates_dir
from dapo_cli.tasks import BUILTIN_TASK_TYPES, TASKS

DEFAULT_EMBEDDED_SIZE = "tiny-1m"
DEFAULT_VOCAB_SIZE = 1024
EMBEDDED_SEED = 0
# Tokenizer training text: this many generated samples of each built-in task type.
TOKENIZER_SAMPLES_PER_TYPE = 400
TOKENIZER_SEED = 0

EOS_TOKEN = "<|endoftext|>"  # also the pad token, as in Qwen2
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)  # ids 0, 1, 2
# Qwen2's pre-tokenizer split (transformers' tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# Text every tokenizer corpus starts with: the chat roles and all printable ASCII.
_FIXED_CORPUS = (
    string.printable,
    "system\nuser\nassistant\nYou are a helpful assistant.",
    "def solve(x):\n    if x is None:\n        return 0\n    for i in range(len(x)):\n"
    "        print(i, x[i])\n    return True\n",
)
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# --- the embedded tokenizer ------------------------------------------------------------


def tokenizer_corpus(
    samples_per_type: int = TOKENIZER_SAMPLES_PER_TYPE, seed: int = TOKENIZER_SEED
) -> list[str]:
    """The text the embedded tokenizer is trained on: fixed lines (printable ASCII, chat
    roles, a little code), then prompt + reference answer of ``samples_per_type`` generated
    samples of each built-in task type. A type whose generator fails is skipped with a
    warning, so a broken task cannot stop the default model from being built."""
    texts = list(_FIXED_CORPUS)
    for task_type in BUILTIN_TASK_TYPES:
        try:
            records = generate_dataset(samples_per_type, [task_type], seed=seed, test_fraction=0)
        except Exception as exc:
            warnings.warn(
                f"tokenizer corpus: skipping task type {task_type!r}: {exc}", stacklevel=2
            )
            continue
        task = TASKS[task_type]
        texts.extend(f"{r['prompt']}\n{task.format_reference(r)}" for r in records)
    return texts


def train_byte_level_bpe(corpus: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE with Qwen2's normaliser/pre-tokenizer/decoder, trained on ``corpus``.

    The 256 byte symbols are always in the vocabulary, so any text encodes. ``vocab_size``
    counts the special tokens (ids 0-2) and bytes; it is reached if the corpus has enough
    distinct pairs. Training is deterministic for the same corpus.
    """
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def build_tokenizer(
    corpus: Iterable[str] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """The embedded tokenizer: :func:`train_byte_level_bpe` on ``corpus`` (default
    :func:`tokenizer_corpus`, always with printable ASCII added), wrapped for transformers
    with ``<|endoftext|>`` as eos and pad, ChatML special tokens and chat template, and left
    padding (for batched generation)."""
    texts = list(corpus) if corpus is not None else tokenizer_corpus()
    texts.append(string.printable)
    return PreTrainedTokenizerFast(
        tokenizer_object=train_byte_level_bpe(texts, vocab_size),
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHATML_TEMPLATE,
        padding_side="left",
    )


# --- the embedded model ----------------------------------------------------------------


def embedded_sizes() -> list[str]:
    """Names of the bundled tiny model configs (``templates/models/*.json``)."""
    return sorted(p.stem for p in (templates_dir() / "models").glob("*.json"))


def tiny_model_config(size: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The ``templates/models/<size>.json`` config, with vocabulary and special-token ids
    taken from ``tokenizer`` (so the embedding has exactly one row per token)."""
    path = templates_dir() / "models" / f"{size}.json"
    if not path.is_file():
        known = ", ".join(embedded_sizes())
        raise DapoError(f"unknown embedded model size {size!r}; use one of {known}")
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings.update(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return AutoConfig.for_model(**settings)


def build_tiny_model(
    size: str = DEFAULT_EMBEDDED_SIZE,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = EMBEDDED_SEED,
) -> PreTrainedModel:
    """A randomly initialised model of the ``size`` config, sized to ``tokenizer`` (default:
    a fresh :func:`build_tokenizer`). The same seed gives the same weights; the global RNG
    is left untouched. Generation stops at ``<|endoftext|>`` or ``<|im_end|>``."""
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    config = tiny_model_config(size, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    stop_ids = [tokenizer.eos_token_id]
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if im_end is not None and im_end != tokenizer.unk_token_id:
        stop_ids.append(im_end)
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def models_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where built models live: ``cache_dir``, else ``$DAPO_HOME``, else ``./models``."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("DAPO_HOME") or "models")


def embedded_base(
    size: str = DEFAULT_EMBEDDED_SIZE, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The folder of the embedded ``size`` model (tokenizer + random-init weights), built
    on first use into ``<root>/embedded/<size>/`` and reused afterwards.

    The build writes to a temporary folder beside the target and renames it into place,
    so a folder that exists is complete, and two concurrent builds cannot mix files.
    """
    target = models_root(cache_dir) / "embedded" / size
    if (target / "config.json").is_file():
        return target
    if target.exists():
        raise DapoError(f"{target} exists but holds no model; delete it to rebuild {size}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{size}-", dir=target.parent))
    try:
        tokenizer = build_tokenizer()
        model = build_tiny_model(size, tokenizer, seed=EMBEDDED_SEED)
        tokenizer.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent build that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --- loading any model -----------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; otherwise the named device, if present."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DapoError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DapoError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise DapoError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DapoError(f"device {device!r} asked for but MPS is not available; use --device cpu")
    return resolved


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX-BF16; Arm's BF16
    extension), as torch's own CPU feature detection reports it. There bf16 matmuls run at
    about 4x the fp32 rate (2-core EPYC: 386 against 95 GFLOP/s); elsewhere bf16 is emulated
    and slower than fp32."""
    try:
        features = torch._C._cpu._get_cpu_capability()  # the flags oneDNN dispatches on
    except (AttributeError, RuntimeError):
        return False
    return bool(features.get("avx512_bf16") or features.get("amx_bf16") or features.get("bf16"))


def resolve_dtype(
    dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """``auto`` is bfloat16 where the hardware computes in it (a CUDA GPU that supports it, a
    CPU with native bf16: :func:`cpu_has_native_bf16`), else float32 (other CPUs, MPS, older
    GPUs: float16 training is unstable without loss scaling). A bf16 policy trains fp32 master
    weights under autocast (scale/trained_model.py)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        device = device or resolve_device("auto")
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise DapoError(
            f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16"
        ) from None


def resolve_model_source(
    name_or_path: str | os.PathLike | None,
    embedded_size: str = DEFAULT_EMBEDDED_SIZE,
    cache_dir: str | os.PathLike | None = None,
) -> Path | str:
    """A local folder or ``.gguf`` file (Path) or a hub id (str). None/empty and the embedded
    size names (``tiny-1m``) give the embedded model's folder, built if needed; an existing
    local path wins over both."""
    if not name_or_path:
        return embedded_base(embedded_size, cache_dir)
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise DapoError(
                f"{path} is neither a Hugging Face model folder (no config.json), a LoRA adapter "
                "(no adapter_config.json) nor a .gguf file"
            )
        return path
    if name in embedded_sizes():
        return embedded_base(name, cache_dir)
    # hub ids are "name" or "org/name"; anything else that is missing was meant as a path
    looks_like_path = name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
    if looks_like_path or isinstance(name_or_path, os.PathLike):
        raise DapoError(f"model path {name!r} does not exist")
    return name


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check, so a missing model fails in seconds instead of after the hub
    client's retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:  # the server answered
        return True
    except (OSError, ValueError):
        return False


def _from_pretrained(loader, source: Path | str, **kwargs):
    """``loader.from_pretrained(source)``, with user-fixable failures as DapoError."""
    if isinstance(source, Path) and source.is_file():  # a .gguf file
        return _from_gguf(loader, source, **kwargs)
    if isinstance(source, Path):
        try:
            return loader.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            raise DapoError(f"could not load the model in {source}: {first_line(exc)}") from exc
    try:  # the local Hugging Face cache first: works offline
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise DapoError(
            f"model {source!r} not found locally and the Hugging Face hub is unreachable; "
            "pass a local path"
        )
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise DapoError(
            f"model {source!r} could not be loaded from the Hugging Face hub "
            f"({first_line(exc)}); check the id or pass a local path"
        ) from exc


def _from_gguf(loader, file: Path, **kwargs):
    """A model or tokenizer from a GGUF file through transformers' GGUF loader. Quantized
    weights are dequantized to ``dtype`` (training needs ordinary tensors), and the model
    then carries no quantizer, so its checkpoints are ordinary ``save_pretrained`` folders."""
    from transformers import GgufConfig

    if loader is AutoModelForCausalLM:
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    try:
        with _quiet_gguf_progress():
            return loader.from_pretrained(file.parent, gguf_file=file.name, **kwargs)
    except ImportError as exc:
        raise DapoError(f"reading {file} needs the gguf package: {first_line(exc)}") from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DapoError(f"could not load the GGUF model {file}: {first_line(exc)}") from exc


@contextlib.contextmanager
def _quiet_gguf_progress():
    """transformers' GGUF reader draws a plain tqdm bar over every tensor, outside its own
    progress-bar switch; our commands print their own progress, and a log needs no bar."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make ``tokenizer`` ready for batched generation: a pad token (eos if it has none)
    and left padding, so every prompt ends where generation starts."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DapoError("the tokenizer has neither a pad nor an eos token; add one to it")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike | None = None,
    *,
    embedded_size: str = DEFAULT_EMBEDDED_SIZE,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    cache_dir: str | os.PathLike | None = None,
    trainable_adapter: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, on ``device`` in ``dtype``.

    ``name_or_path``: a local folder or ``.gguf`` file, a Hugging Face hub id, an embedded
    size name, or None for the embedded ``embedded_size`` model (built offline on first use,
    under ``cache_dir``/``$DAPO_HOME``/``./models``). A LoRA adapter folder gives its base
    model with the adapter merged in, or, with ``trainable_adapter``, still trainable.
    """
    from dapo_cli import lora

    source = resolve_model_source(name_or_path, embedded_size, cache_dir)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    tokenizer = prepare_tokenizer(_from_pretrained(AutoTokenizer, source))
    if isinstance(source, Path) and lora.is_adapter(source):
        base, _ = load_model_and_tokenizer(
            lora.base_of(source), device=resolved_device, dtype=resolved_dtype
        )
        model = lora.load_adapted(source, base, trainable=trainable_adapter)
        return model.to(resolved_device), tokenizer
    model = _from_pretrained(AutoModelForCausalLM, source, dtype=resolved_dtype)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(resolved_device), tokenizer


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward instead of keeping them.

    transformers checkpoints a layer only while that layer is in training mode, and the
    policy stays in eval mode (no dropout: sampling and training see the same function), so
    ``gradient_checkpointing_enable`` alone would do nothing here. Only the checkpointed
    layers themselves are switched to training mode: that flag turns checkpointing on, and
    the dropout inside a layer reads its own submodule's flag, which stays off."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise DapoError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(kwargs)
    else:  # earlier 5.x: the same switch under its former name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True


def checkpointing_enabled(model) -> bool:
    """Whether ``model`` recomputes layer activations in its backward (any torch module)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # new, old
        if isinstance(getattr(type(model), name, None), property):
            return bool(getattr(model, name))
    return False


# --- prompts ---------------------------------------------------------------------------


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None
) -> str:
    """The text the model sees for ``prompt``: the chat template with the assistant turn
    opened, when the tokenizer has one; else the prompt (after ``system`` and a blank line)."""
    if not has_chat_template(tokenizer):
        return prompt if system is None else f"{system}\n\n{prompt}"
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied input/output embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
