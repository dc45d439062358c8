"""A training run from a config: data, model (with the warm start for the embedded default),
the step loop, metrics to the store, checkpoints, resume and Ctrl-C.

The CLI calls :func:`run_training` and renders what it reports through a ``TrainObserver``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dapo_cli import lora, sandbox
from dapo_cli.config import Config, to_yaml
from dapo_cli.datagen import generate_dataset
from dapo_cli.errors import DapoError
from dapo_cli.models import count_parameters, embedded_base, models_root
from dapo_cli.observer import TrainObserver
from dapo_cli.paths import resolve_db_path
from dapo_cli.policy import Policy, load_policy
from dapo_cli.rewards import require_sandbox_for
from dapo_cli.rollout import Sampler, TorchSampler
from dapo_cli.runlog import LoggedObserver, RunLog, log_path
from dapo_cli.samples import load_samples as samples_from
from dapo_cli.scale import checkpoint as ckpt
from dapo_cli.scale.distributed import Dist, from_env
from dapo_cli.scale.trained_model import (
    fsdp_options,
    is_sharded,
    load_optimizer_state,
    master_weights,
    optimizer_state,
    prepare_trained,
)
from dapo_cli.scale.vllm_engine import INSTALL_HINT, VllmEngine, vllm_available
from dapo_cli.sft import supervised_warm_start
from dapo_cli.step import Converged, PromptStream, StepState, dapo_step, lr_lambda
from dapo_cli.store import Store
from dapo_cli.user_reward import load_reward

# With no data given: number puzzles (many correct answers, checked by their properties), a
# task a ~1M-parameter model learns in minutes on a CPU and where the reward teaches more than
# the reference answers do (the full task mix needs a larger model or a longer warm start).
CONFIG_FILE = "config.yaml"  # the run's configuration, in output_dir
DEFAULT_DATA = {"num_samples": 12000, "task_types": ["puzzle"], "difficulty": "mixed"}


@dataclass
class TrainResult:
    run_id: str
    status: str  # completed | converged | interrupted
    steps: int
    final_dir: Path | None
    db_path: Path
    history: list[dict[str, float]] = field(default_factory=list)
    signal: int | None = None  # interrupted: SIGINT or SIGTERM
    note: str = ""  # converged: why


def load_samples(config: Config, observer: TrainObserver) -> list[dict[str, Any]]:
    """The training split from a file or the store (``samples.load_samples``), or (neither
    given) freshly generated puzzles."""
    d = config.data
    if d.path or d.db_path:
        samples, where = samples_from(
            d.path or None, d.db_path or None, split=d.split, task_types=d.task_types or None,
            fmt=d.format, fields=(d.prompt_field, d.answer_field), hub_config=d.hub_config,
        )  # fmt: skip
    else:
        generated = generate_dataset(**DEFAULT_DATA, seed=config.train.seed)
        samples = [r for r in generated if r["split"] == "train"]
        where = "generated number puzzles (no --data given)"
    observer.message(f"data: {len(samples)} samples from {where}")
    return samples


def _warm_start_dir(config: Config, samples: list[dict[str, Any]]) -> Path:
    """Where the warm-started embedded model for these samples and settings is cached."""
    w = config.warm_start
    parts = {"size": config.model.embedded_size, "steps": w.steps, "batch": w.batch_size,
             "lr": w.lr, "max_s": w.max_seconds, "seed": config.train.seed,
             "ids": sorted(s["id"] for s in samples)}  # fmt: skip
    if config.data.system_prompt is not None:  # without one, the cache key stays as it was
        parts["system"] = config.data.system_prompt
    if config.data.prompt_template is not None:  # likewise
        parts["template"] = config.data.prompt_template
    key = json.dumps(parts, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return models_root() / "embedded" / f"{config.model.embedded_size}-warm-{digest}"


def warm_start(config: Config, samples: list[dict[str, Any]], observer: TrainObserver) -> Path:
    """The embedded model after the supervised warm start; built once, then reused."""
    target = _warm_start_dir(config, samples)
    if (target / "config.json").is_file():
        observer.message(f"warm start: reusing {target}")
        return target
    base = embedded_base(config.model.embedded_size)
    policy = load_policy(str(base), device=config.model.device, dtype=config.model.dtype)
    policy.system = config.data.system_prompt
    policy.template = config.data.prompt_template
    _supervise(policy, samples, config, observer)
    ckpt.save_checkpoint(target, policy.model, policy.tokenizer)
    observer.message(f"warm start: saved to {target}")
    return target


def _supervise(policy: Policy, samples, config: Config, observer: TrainObserver) -> None:
    w = config.warm_start
    torch.manual_seed(config.train.seed)
    observer.message(f"warm start: {w.steps} supervised steps on {len(samples)} samples")
    summary = supervised_warm_start(
        policy, samples, steps=w.steps, batch_size=w.batch_size, lr=w.lr,
        seed=config.train.seed, max_seconds=w.max_seconds,
        on_step=lambda step, loss: observer.sft_step(step, w.steps, loss),
    )  # fmt: skip
    observer.message(
        f"warm start: loss {summary['loss_final']:.3f} after {int(summary['steps'])} steps "
        f"({summary['seconds']:.0f} s)"
    )


class _GracefulInterrupt:
    """First Ctrl-C or SIGTERM (a scheduler's, ``kill``): finish the current step, save,
    exit (130 / 143 in the CLI). A second: stop at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, observer: TrainObserver):
        self.signum: int | None = None
        self.observer = observer

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.signum = signum
        name = signal.Signals(signum).name
        self.observer.message(f"{name}: finishing this step, then saving (again to abort)")

    @contextlib.contextmanager
    def installed(self):
        try:
            previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave the default behaviour
            yield self
            return
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@dataclass
class _StepStart:
    """What a step changes before its update: restored to save the last good state when
    the step fails before the optimiser has moved."""

    stream: dict
    generator: torch.Tensor
    rng: tuple
    torch_rng: torch.Tensor
    optimizer_steps: int

    @classmethod
    def take(cls, stream, generator, rng, optimizer) -> _StepStart:
        return cls(
            stream.state_dict(), generator.get_state(), rng.getstate(),
            torch.get_rng_state(), _optimizer_steps(optimizer),
        )  # fmt: skip

    def restore(self, stream, generator, rng) -> None:
        stream.load_state_dict(self.stream)
        generator.set_state(self.generator)
        rng.setstate(self.rng)
        torch.set_rng_state(self.torch_rng)


def _optimizer_steps(optimizer) -> int:
    """How many steps the optimiser has taken (AdamW counts them per parameter)."""
    for state in optimizer.state.values():
        return int(state.get("step", 0))
    return 0


def _sampling_generator(device, seed: int, dist: Dist) -> torch.Generator:
    """Rank 0 samples with ``seed`` (a single process is rank 0); other ranks with their own
    streams, so two ranks never draw the same random numbers."""
    return torch.Generator(device=device).manual_seed(seed + 1_000_003 * dist.rank)


def run_training(
    config: Config, *, resume: bool = False, observer: TrainObserver | None = None
) -> TrainResult:
    """Train with DAPO as ``config`` says; returns where things went and the metrics.

    Under ``accelerate launch``/``torchrun`` every process calls this; see
    ``scale.distributed``."""
    return build_run(config, resume=resume, observer=observer).train()


def build_run(
    config: Config, *, resume: bool = False, observer: TrainObserver | None = None
) -> Run:
    """Everything a run needs, loaded and checked in this order: the checkpoint to resume,
    the data (and the sandbox its rewards need), the model (warm-started when asked), the
    module the optimiser trains, the sampler, the KL reference, the optimiser; then the
    state of a resumed run, and where its metrics go."""
    if config.rollout.engine == "vllm" and not vllm_available():
        raise DapoError(INSTALL_HINT)  # before any work
    dist = from_env()
    observer = observer if observer is not None and dist.main else TrainObserver()
    log = RunLog()  # the run's plain-text log, opened once the run has its id
    if dist.main:
        observer = LoggedObserver(observer, log)
    out_dir = Path(config.output.output_dir)
    if dist.main:
        for leftover in ckpt.remove_leftovers(out_dir):
            observer.message(f"removed {leftover.name}, left by a save that was killed")
    resume_from, state = _resume_point(out_dir, observer) if resume else (None, None)

    samples = load_samples(config, observer)
    _check_reward(config, samples, observer)
    source, warm = _model_source(config, resume_from, samples, dist, observer)
    policy = load_policy(
        source, device=_device(config, dist), dtype=config.model.dtype,
        trainable_adapter=resume_from is not None,  # a resumed LoRA run trains its adapter on
    )  # fmt: skip
    policy.system = config.data.system_prompt
    policy.template = config.data.prompt_template
    observer.message(_model_line(source, policy, dist))
    if warm:
        _supervise(policy, samples, config, observer)
    _add_lora(config, policy, source, observer)
    dist.broadcast_params(policy.model)
    trained = _trained_module(config, policy, source, state, dist, observer)
    samples = _fitting_prompts(policy, samples, config.data.max_prompt_tokens, observer)
    sampler = _sampler(config, source, policy, trained, dist, observer)
    reference, reference_source = None, None
    if config.algorithm.kl_coef > 0:
        reference_source = _kl_reference_source(source, warm, state, policy, out_dir, dist)
        reference = load_policy(reference_source, device=policy.device, dtype=config.model.dtype)

    t = config.train
    torch.manual_seed(t.seed)
    optimizer = torch.optim.AdamW(
        [p for p in trained.parameters() if p.requires_grad],
        lr=t.lr,
        weight_decay=t.weight_decay,
    )
    run = Run(
        config, dist, observer, out_dir, policy, trained, sampler,
        reference.model if reference else None, reference_source, optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config)),
        stream=PromptStream(samples, t.seed),
        generator=_sampling_generator(policy.device, t.seed, dist),
        rng=random.Random(f"dapo-minibatch:{t.seed}"),
    )  # fmt: skip
    _start_recording(run, log, source, state, resume_from)
    return run


def _start_recording(run: Run, log: RunLog, source: str, state, resume_from) -> None:
    """The run's record: restored (and its store run reopened) when resuming, else a new
    store run; its log, its config.yaml and TensorBoard on rank 0; the sinks for its steps."""
    config, dist, observer = run.config, run.dist, run.observer
    db_path = resolve_db_path(config.output.db_path)
    store = Store(db_path) if dist.main else None  # only rank 0 writes
    if state is not None:
        run.load_state_dict(state)
        if store is not None:
            store.reopen_run(run.run_id, run.steps_done)
        observer.message(f"resumed from {resume_from} at step {run.steps_done}")
    elif store is not None:
        run.run_id = store.start_run("train", config.to_dict(), source)
    tensorboard = None
    if dist.main:
        observer.message(f"log: {log.open(log_path(db_path, 'train', run.run_id))}")
        _save_config(config, run.out_dir)
        tensorboard = _tensorboard_writer(run.out_dir, run.run_id, observer)
    run.sinks = MetricSinks(db_path, store, log, tensorboard, observer)


def _resume_point(out_dir: Path, observer) -> tuple[Path, dict[str, Any]]:
    """The latest good checkpoint under ``out_dir`` and its trainer state."""
    point = ckpt.resume_point(out_dir)
    if point is None:
        raise DapoError(f"--resume: no checkpoint under {out_dir}; start without --resume")
    resume_from, state, skipped = point
    for problem in skipped:
        observer.message(f"resume: passed over a broken checkpoint: {problem}")
    return resume_from, state


def _check_reward(config: Config, samples, observer) -> None:
    """Before any work: a user reward that cannot be loaded, or task rewards whose sandbox
    cannot start, fail here in one line."""
    if config.reward.function:
        load_reward(config.reward.function)
        observer.message(f"reward: {config.reward.function} (in this process, not sandboxed)")
    else:
        _check_sandbox(config, samples, observer)


def _model_source(config: Config, resume_from, samples, dist: Dist, observer) -> tuple[str, bool]:
    """What to load (a checkpoint, the named model, or the embedded one, warm-started and
    cached unless switched off) and whether to warm-start it here first."""
    if resume_from is not None:
        return str(resume_from), False
    if config.model.name:
        return config.model.name, config.warm_start.enabled == "on"
    with dist.main_first():  # rank 0 builds the cache, the others then reuse it
        embedded = (
            warm_start(config, samples, observer)
            if config.warm_start.enabled != "off"
            else embedded_base(config.model.embedded_size)
        )
    return str(embedded), False


def _add_lora(config: Config, policy: Policy, source: str, observer) -> None:
    """LoRA adapters on the policy's model when ``lora.r > 0`` (a resumed LoRA run loaded
    its own, still trainable); what trains is said."""
    if config.lora.r > 0 and not lora.is_lora(policy.model):
        base = str(Path(source).resolve()) if Path(source).exists() else source
        adapted = lora.add_adapters(policy.model, config.lora, base, seed=config.train.seed)
        policy.model = adapted.eval()
    if lora.is_lora(policy.model):
        adapter = policy.model.peft_config["default"]
        trained, total = lora.trainable_share(policy.model)
        observer.message(
            f"LoRA: r {adapter.r}, alpha {adapter.lora_alpha:g} on {config.lora.target_modules}: "
            f"{trained / 1e6:.2f}M of {total / 1e6:.1f}M parameters train "
            f"({100 * trained / total:.2f}%); checkpoints hold the adapter"
        )


def _trained_module(config: Config, policy: Policy, source: str, state, dist, observer):
    """The module the optimiser updates (see scale/trained_model.py): the policy's own model, an
    fp32 master copy of a bf16/fp16 policy (a resumed run's master weights, from its trainer
    ``state``), or an FSDP copy; said when it is not the policy's own."""
    fp32_weights = None
    if state is not None and state.get("master_weights") is not None:
        fp32_weights = load_policy(source, device=policy.device, dtype="float32").model
        fp32_weights.load_state_dict(state["master_weights"])
    trained = prepare_trained(
        policy.model,
        dist,
        parallelism=config.train.parallelism,
        gradient_checkpointing=config.model.gradient_checkpointing,
        fp32_weights=fp32_weights,
    )
    if is_sharded(trained):
        offload = fsdp_options()["offload_params"] and policy.device.type != "cpu"
        observer.message(
            f"FSDP: parameters, gradients and optimiser state sharded over {dist.world} "
            f"process{'es' if dist.world > 1 else ''}"
            f"{', offloaded to CPU memory' if offload else ''}; rollout on a full copy, "
            "refreshed after each update"
        )
    if policy.model.dtype != torch.float32:
        observer.message(
            f"mixed precision: {str(policy.model.dtype).removeprefix('torch.')} compute, "
            "fp32 master weights"
        )
    return trained


@dataclass
class MetricSinks:
    """Where a run's metrics and outcome go: the store, the plain-text log, TensorBoard and
    the observer (the CLI's step line). Only rank 0 has a store and a writer."""

    db_path: Path
    store: Store | None
    log: RunLog
    tensorboard: Any
    observer: TrainObserver

    def record(self, run_id: str, step: int, total: int, metrics: dict[str, float]) -> None:
        if self.store is not None:
            self.store.log_metrics(run_id, step, metrics)
        if self.tensorboard is not None:
            for name, value in metrics.items():
                self.tensorboard.add_scalar(f"dapo/{name}", value, step)
            self.tensorboard.flush()
        self.observer.train_step(step, total, metrics)

    def mark(self, run_id: str, status: str) -> None:
        if self.store is not None:
            self.store.finish_run(run_id, status)

    def close(self, line: str) -> None:
        self.log.line(line)
        self.log.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


# What Run.state_dict keeps; a checkpoint without one of them cannot be resumed exactly.
_STATE_KEYS = ("step", "run_id", "stream", "optimizer", "scheduler", "generators", "rng",
               "torch_rng", "kl_reference")  # fmt: skip


@dataclass
class Run:
    """A training run, built by ``build_run``: ``step()`` takes one DAPO step and records
    it; ``train()`` steps to ``train.steps`` with checkpoints, Ctrl-C/SIGTERM, rescue of the
    last good state and the final save; ``state_dict()`` is what a checkpoint keeps."""

    config: Config
    dist: Dist
    observer: TrainObserver
    out_dir: Path
    policy: Policy
    trained: Any  # the module the optimiser updates (see _trained_module)
    sampler: Sampler
    reference: Any  # the KL reference model, or None
    reference_source: str | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stream: PromptStream
    generator: torch.Generator
    rng: random.Random
    sinks: MetricSinks | None = None
    run_id: str = ""
    steps_done: int = 0
    samples_done: int = 0  # responses generated so far (train.max_samples)
    history: list[dict[str, float]] = field(default_factory=list)
    pending: _StepStart | None = None  # a step under way: the state before it

    @property
    def step_state(self) -> StepState:
        """What ``dapo_step`` reads and advances (the same objects this run holds)."""
        return StepState(
            self.policy, self.optimizer, self.scheduler, self.stream, self.generator,
            self.rng, self.reference, self.dist, self.trained, self.sampler,
        )  # fmt: skip

    def step(self) -> dict[str, float]:
        """One DAPO step (raises ``Converged`` when dynamic sampling finds nothing to learn);
        its metrics recorded."""
        self.pending = _StepStart.take(self.stream, self.generator, self.rng, self.optimizer)
        metrics = dapo_step(self.step_state, self.config)
        self.pending = None  # the step is done: the live state is the good state
        self.steps_done += 1
        self.samples_done += int(metrics["responses_generated"])
        self.history.append(metrics)
        self.sinks.record(self.run_id, self.steps_done, self.config.train.steps, metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:  # its keys: _STATE_KEYS
        """The trainer state a checkpoint keeps (empty on ranks other than 0). A collective
        under several processes: every rank calls it."""
        generators = self.dist.gather(self.generator.get_state())
        optim = optimizer_state(self.trained, self.optimizer)  # collective under FSDP
        master = master_weights(self.trained, self.policy.model)  # collective under FSDP
        if not self.dist.main:
            return {}
        return {
            "step": self.steps_done, "run_id": self.run_id, "stream": self.stream.state_dict(),
            "optimizer": optim, "scheduler": self.scheduler.state_dict(),
            "generators": generators,  # every rank's sampling stream, in rank order
            "rng": self.rng.getstate(), "torch_rng": torch.get_rng_state(),
            "kl_reference": self.reference_source, "master_weights": master,
            "samples": self.samples_done,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise DapoError(
                f"--resume: the checkpoint's trainer state lacks {', '.join(missing)} (written "
                "by an older dapo_cli); resume it with that version or start a new run"
            )
        self.steps_done, self.run_id = state["step"], state["run_id"]
        self.samples_done = state.get("samples", 0)  # older checkpoints: counted from here
        load_optimizer_state(self.trained, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.load_state_dict(state["stream"])
        generators = state["generators"]
        if len(generators) == self.dist.world:
            self.generator.set_state(generators[self.dist.rank])
        else:
            self.observer.message(
                f"resume: the checkpoint has {len(generators)} sampling stream(s) for "
                f"{self.dist.world} process(es); sampling is reseeded"
            )
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])

    def save(self, path: Path) -> None:
        """A checkpoint of the weights and the trainer state (every rank calls it)."""
        state = self.state_dict()
        if self.dist.main:  # the rollout model: the function that was sampled and rewarded
            ckpt.save_checkpoint(path, self.policy.model, self.policy.tokenizer, state)
        self.dist.barrier()

    @property
    def budget_spent(self) -> bool:
        """train.max_samples responses generated (never, when it is 0)."""
        return 0 < self.config.train.max_samples <= self.samples_done

    def train(self) -> TrainResult:
        """Step to ``train.steps`` (or ``train.max_samples``); save the final checkpoint;
        report how it ended."""
        t, dist, sinks = self.config.train, self.dist, self.sinks
        status, note = "completed", ""
        interrupt = _GracefulInterrupt(self.observer)
        first_step = self.steps_done
        try:
            with interrupt.installed():
                while self.steps_done < t.steps and not self.budget_spent:
                    try:
                        self.step()
                    except Converged as done:
                        status, note = "converged", str(done)
                        self.observer.message(note)
                        break
                    stop = dist.any(interrupt.requested)  # every rank stops at the same step
                    every = self.config.output.save_every
                    if stop or (
                        every
                        and self.steps_done % every == 0
                        and self.steps_done < t.steps
                        and not self.budget_spent  # the final checkpoint follows
                    ):
                        self.save(ckpt.step_dir(self.out_dir, self.steps_done))
                        if dist.main:
                            ckpt.prune_checkpoints(
                                self.out_dir, self.config.output.keep_checkpoints
                            )
                    if stop:
                        status = "interrupted"
                        break
        except BaseException as exc:
            sinks.mark(self.run_id, "failed" if not interrupt.requested else "interrupted")
            if isinstance(exc, Exception) and self.steps_done > first_step:
                self._rescue()
            sinks.log.line(f"failed at step {self.steps_done}: {type(exc).__name__}: {exc}")
            sinks.log.close()
            raise
        final_dir = None
        if status in ("completed", "converged"):
            final_dir = self.out_dir / ckpt.FINAL_NAME
            self.save(final_dir)
        sinks.mark(self.run_id, status)
        sinks.close(
            f"{status} after {self.steps_done} steps"
            + (f"; final checkpoint {final_dir}" if final_dir else "")
        )
        if isinstance(self.sampler, VllmEngine):
            dist.barrier()  # vLLM's shutdown also ends the launcher's process group
            self.sampler.close()
        dist.close()  # every rank leaves together (see Dist.close)
        return TrainResult(
            self.run_id, status, self.steps_done, final_dir, sinks.db_path, self.history,
            interrupt.signum, note,
        )  # fmt: skip

    def _rescue(self) -> None:
        """Something failed after this run trained: keep what it trained. Between steps, or
        inside a step whose optimiser had not yet moved, the weights and optimiser are the
        last good state: with the step's data position and random streams put back, it is
        saved as this step's checkpoint (what ``--resume`` picks up). Otherwise (or under
        several processes, where a save is a collective the failed rank cannot join) the
        latest checkpoint is named."""
        target = ckpt.step_dir(self.out_dir, self.steps_done)
        latest = ckpt.latest_checkpoint(self.out_dir)
        start = self.pending
        intact = start is None or _optimizer_steps(self.optimizer) == start.optimizer_steps
        command = resume_command(self.out_dir)
        if not self.dist.active and intact:
            if latest != target:
                if start is not None:
                    start.restore(self.stream, self.generator, self.rng)
                try:
                    self.save(target)
                except Exception as exc:  # noqa: BLE001  (the original error is raised)
                    self.observer.message(f"could not save the last good state ({exc})")
                    return
            self.observer.message(
                f"saved the last good state (step {self.steps_done}) to {target}; "
                f"continue: {command}"
            )
        elif latest is not None:
            self.observer.message(
                f"the failed step had started to update the weights; the latest checkpoint "
                f"is {latest}; continue from it: {command}"
            )


def _check_sandbox(config: Config, samples: list[dict[str, Any]], observer) -> None:
    """Before any work: code tasks need the sandbox (or the explicit opt-in to rlimits only,
    said at every start)."""
    sandbox.allow_rlimits_only(config.reward.sandbox == sandbox.WEAK)
    status = require_sandbox_for({s["task_type"] for s in samples})
    if status is not None:
        warning = "WARNING: " if not status.startswith("bubblewrap") else ""
        observer.message(f"{warning}sandbox for code rewards: {status}")


def _save_config(config: Config, out_dir: Path) -> None:
    """The run's configuration beside its checkpoints, so that it can be resumed by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".config.yaml.{os.getpid()}"
    tmp.write_text(to_yaml(config), encoding="utf-8")
    tmp.replace(out_dir / CONFIG_FILE)


def resume_command(out_dir: str | os.PathLike) -> str:
    """The command that continues the run writing to ``out_dir``."""
    return f"dapo train --config {shlex.quote(str(Path(out_dir) / CONFIG_FILE))} --resume"


def _kl_reference_source(source, warm_started, state, policy, out_dir, dist) -> str:
    """Where the KL penalty's reference lies: the run's starting policy (after any warm
    start), recorded in the trainer state so that a resumed run keeps its objective. A
    policy warm-started in this run exists only in memory: saved once to
    ``<output_dir>/kl_reference``."""
    if state is not None:  # resumed
        where = state.get("kl_reference")
        if where is None:
            raise DapoError(
                "--resume: the checkpoint does not record its run's KL reference (saved "
                "without algorithm.kl_coef, or by an older dapo_cli); resume with "
                "algorithm.kl_coef=0 or start a new run"
            )
        return where
    if not warm_started:
        return str(Path(source).resolve()) if Path(source).exists() else source
    where = out_dir.resolve() / "kl_reference"
    if dist.main:
        ckpt.save_checkpoint(where, policy.model, policy.tokenizer)
    dist.barrier()
    return str(where)


def _model_line(source: str, policy: Policy, dist: Dist) -> str:
    """What trains where: e.g. ``model: Qwen/Qwen2.5-0.5B (494.0M parameters, bfloat16) on
    cuda:0 (NVIDIA H100 80GB HBM3)``."""
    device = policy.device
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu":
        threads = torch.get_num_threads()
        where = f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    else:
        where = str(device)
    n = count_parameters(policy.model)
    dtype = str(policy.model.dtype).removeprefix("torch.")
    each = f" x {dist.world} processes" if dist.active else ""
    return f"model: {source} ({n / 1e6:.1f}M parameters, {dtype}) on {where}{each}"


def _sampler(config: Config, source: str, policy: Policy, trained, dist: Dist, observer) -> Sampler:
    """Our sampling loop, or a vLLM engine over the policy when ``rollout.engine=vllm``."""
    if config.rollout.engine != "vllm":
        return TorchSampler()
    if is_sharded(trained) and not dist.active:
        raise DapoError(
            "rollout.engine=vllm with FSDP on one process is not supported (vLLM would "
            "start its own process group); use train.parallelism=ddp, or several processes"
        )
    limit = config.data.max_prompt_tokens + config.rollout.max_new_tokens
    positions = getattr(policy.model.config, "max_position_embeddings", None) or limit
    engine = VllmEngine(
        source,
        policy.model,
        seed=config.train.seed + dist.rank,
        max_model_len=min(limit, positions),
        memory_utilization=config.rollout.vllm_memory_utilization,
        distributed=dist.active,
    )
    observer.message(
        f"rollout: vLLM {engine.version} in this process, weights copied in after each "
        "update; old log-probs from the policy model"
    )
    return engine


def _device(config: Config, dist: Dist):
    """One GPU per process under a launcher (LOCAL_RANK); the configured device otherwise."""
    if dist.active and config.model.device == "auto" and torch.cuda.is_available():
        return f"cuda:{dist.local_rank}"
    return config.model.device


def _fitting_prompts(policy: Policy, samples, limit: int, observer: TrainObserver):
    kept = [s for s in samples if policy.prompt_length(s["prompt"]) <= limit]
    if len(kept) < len(samples):
        observer.message(
            f"data: skipped {len(samples) - len(kept)} prompts longer than {limit} tokens "
            "(data.max_prompt_tokens)"
        )
    if not kept:
        raise DapoError(f"every prompt is longer than data.max_prompt_tokens={limit}")
    return kept


def _tensorboard_writer(out_dir: Path, run_id: str, observer: TrainObserver):
    """TensorBoard event files under ``<output_dir>/tensorboard/<run>`` when tensorboard is
    installed (``pip install tensorboard``); nothing otherwise."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    logdir = out_dir / "tensorboard" / run_id
    observer.message(f"tensorboard: {logdir}")
    return SummaryWriter(log_dir=str(logdir))
