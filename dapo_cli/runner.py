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

from dapo_cli import checkpoint as ckpt
from dapo_cli import sandbox
from dapo_cli.config import Config, to_yaml
from dapo_cli.datagen import generate_dataset
from dapo_cli.distributed import Dist, from_env
from dapo_cli.errors import DapoError
from dapo_cli.models import count_parameters, embedded_base, models_root
from dapo_cli.observer import TrainObserver
from dapo_cli.paths import resolve_db_path
from dapo_cli.policy import Policy, load_policy
from dapo_cli.records import read_records
from dapo_cli.rewards import require_sandbox_for
from dapo_cli.rollout import Sampler, TorchSampler
from dapo_cli.runlog import LoggedObserver, RunLog, log_path
from dapo_cli.sft import supervised_warm_start
from dapo_cli.sharding import (
    fsdp_options,
    is_sharded,
    load_optimizer_state,
    optimizer_state,
    prepare_trained,
    weights_to_save,
)
from dapo_cli.store import Store
from dapo_cli.trainer import Converged, PromptStream, lr_lambda, rollout_step
from dapo_cli.vllm_engine import INSTALL_HINT, VllmEngine, vllm_available

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
    """The training split from the store, a file, or (neither given) freshly generated."""
    d = config.data
    if d.db_path:
        samples = Store(d.db_path, create=False).samples(
            split=d.split, task_types=d.task_types or None
        )
        where = f"{d.db_path} (split {d.split})"
    elif d.path:
        samples = [r for r in read_records(d.path) if r["split"] == d.split]
        where = f"{d.path} (split {d.split})"
    else:
        samples = [
            r
            for r in generate_dataset(**DEFAULT_DATA, seed=config.train.seed)
            if r["split"] == "train"
        ]
        where = "generated number puzzles (no --data given)"
    if d.task_types:
        samples = [s for s in samples if s["task_type"] in d.task_types]
    if not samples:
        raise DapoError(f"no training samples in {where}; check the split and task types")
    observer.message(f"data: {len(samples)} samples from {where}")
    return samples


def _warm_start_dir(config: Config, samples: list[dict[str, Any]]) -> Path:
    """Where the warm-started embedded model for these samples and settings is cached."""
    w = config.warm_start
    key = json.dumps(
        {"size": config.model.embedded_size, "steps": w.steps, "batch": w.batch_size,
         "lr": w.lr, "max_s": w.max_seconds, "seed": config.train.seed,
         "ids": sorted(s["id"] for s in samples)},
        sort_keys=True,
    )  # fmt: skip
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


def _trainer_state(step, run_id, stream, optim_state, scheduler, generators, rng) -> dict:
    """``generators``: every rank's sampling generator state, in rank order."""
    return {
        "step": step, "run_id": run_id, "stream": stream.state_dict(),
        "optimizer": optim_state, "scheduler": scheduler.state_dict(),
        "generator": generators[0], "generators": generators, "rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
    }  # fmt: skip


def _sampling_generator(device, seed: int, dist: Dist) -> torch.Generator:
    """Rank 0 samples with ``seed`` (a single process is rank 0); other ranks with their own
    streams, so two ranks never draw the same random numbers."""
    return torch.Generator(device=device).manual_seed(seed + 1_000_003 * dist.rank)


def run_training(
    config: Config, *, resume: bool = False, observer: TrainObserver | None = None
) -> TrainResult:
    """Train with DAPO as ``config`` says; returns where things went and the metrics.

    Under ``accelerate launch``/``torchrun`` every process calls this; see ``distributed``."""
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
    resume_from, state = None, None
    if resume:
        point = ckpt.resume_point(out_dir)
        if point is None:
            raise DapoError(f"--resume: no checkpoint under {out_dir}; start without --resume")
        resume_from, state, skipped = point
        for problem in skipped:
            observer.message(f"resume: passed over a broken checkpoint: {problem}")

    samples = load_samples(config, observer)
    _check_sandbox(config, samples, observer)
    if resume_from is not None:
        source, warm = str(resume_from), False
    elif config.model.name:
        source, warm = config.model.name, config.warm_start.enabled == "on"
    else:  # the embedded default: warm-started (and cached) unless switched off
        with dist.main_first():  # rank 0 builds the cache, the others then reuse it
            embedded = (
                warm_start(config, samples, observer)
                if config.warm_start.enabled != "off"
                else embedded_base(config.model.embedded_size)
            )
        source, warm = str(embedded), False
    policy = load_policy(source, device=_device(config, dist), dtype=config.model.dtype)
    observer.message(_model_line(source, policy, dist))
    if warm:
        _supervise(policy, samples, config, observer)
    dist.broadcast_params(policy.model)
    fp32_weights = None
    if resume_from is not None and policy.model.dtype != torch.float32:  # saved master weights
        fp32_weights = load_policy(source, device=policy.device, dtype="float32").model
    trained = prepare_trained(  # the module the optimiser updates (see sharding.py)
        policy.model,
        dist,
        parallelism=config.train.parallelism,
        gradient_checkpointing=config.model.gradient_checkpointing,
        fp32_weights=fp32_weights,
    )
    del fp32_weights
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
    samples = _fitting_prompts(policy, samples, config.data.max_prompt_tokens, observer)
    sampler = _sampler(config, source, policy, trained, dist, observer)
    reference, reference_source = None, None
    if config.algorithm.kl_coef > 0:
        reference_source = _kl_reference_source(source, warm, state, policy, out_dir, dist)
        reference = load_policy(
            reference_source, device=policy.device, dtype=config.model.dtype
        ).model

    t = config.train
    torch.manual_seed(t.seed)
    optimizer = torch.optim.AdamW(
        [p for p in trained.parameters() if p.requires_grad],
        lr=t.lr,
        weight_decay=t.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    stream = PromptStream(samples, t.seed)
    generator = _sampling_generator(policy.device, t.seed, dist)
    rng = random.Random(f"dapo-minibatch:{t.seed}")
    step = 0

    db_path = resolve_db_path(config.output.db_path)
    store = Store(db_path) if dist.main else None  # only rank 0 writes
    run_id = ""
    if state is not None:
        step, run_id = state["step"], state["run_id"]
        load_optimizer_state(trained, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["stream"])
        generators = state.get("generators", [state["generator"]])
        if len(generators) == dist.world:
            generator.set_state(generators[dist.rank])
        else:
            observer.message(
                f"resume: the checkpoint has {len(generators)} sampling stream(s) for "
                f"{dist.world} process(es); sampling is reseeded"
            )
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if store is not None:
            store.reopen_run(run_id, step)
        observer.message(f"resumed from {resume_from} at step {step}")
    elif store is not None:
        run_id = store.start_run("train", config.to_dict(), source)
    if dist.main:
        observer.message(f"log: {log.open(log_path(db_path, 'train', run_id))}")
        _save_config(config, out_dir)

    def save(path: Path) -> None:
        generators = dist.gather(generator.get_state())  # collective: every rank calls it
        optim = optimizer_state(trained, optimizer)  # collective under FSDP
        model, weights = weights_to_save(trained, policy.model)  # collective under FSDP
        if dist.main:
            saved = _trainer_state(step, run_id, stream, optim, scheduler, generators, rng)
            saved["kl_reference"] = reference_source
            ckpt.save_checkpoint(path, model, policy.tokenizer, saved, weights=weights)
        dist.barrier()

    history: list[dict[str, float]] = []
    status, note = "completed", ""
    tensorboard = _tensorboard_writer(out_dir, run_id, observer) if dist.main else None
    interrupt = _GracefulInterrupt(observer)
    first_step = step
    try:
        with interrupt.installed():
            while step < t.steps:
                start = _StepStart.take(stream, generator, rng, optimizer)
                try:
                    metrics = rollout_step(
                        policy, optimizer, scheduler, stream, config, generator, rng, reference,
                        dist, trained, sampler,
                    )  # fmt: skip
                except Converged as done:
                    status, note = "converged", str(done)
                    observer.message(note)
                    break
                start = None  # the step is done: the live state is the good state
                step += 1
                history.append(metrics)
                if store is not None:
                    store.log_metrics(run_id, step, metrics)
                if tensorboard is not None:
                    for name, value in metrics.items():
                        tensorboard.add_scalar(f"dapo/{name}", value, step)
                    tensorboard.flush()
                observer.train_step(step, t.steps, metrics)
                every = config.output.save_every
                stop = dist.any(interrupt.requested)  # every rank stops at the same step
                if stop or (every and step % every == 0 and step < t.steps):
                    save(ckpt.step_dir(out_dir, step))
                    if dist.main:
                        ckpt.prune_checkpoints(out_dir, config.output.keep_checkpoints)
                if stop:
                    status = "interrupted"
                    break
    except BaseException as exc:
        if store is not None:
            store.finish_run(run_id, "failed" if not interrupt.requested else "interrupted")
        if isinstance(exc, Exception) and step > first_step:
            _rescue(step, start, save, stream, generator, rng, optimizer, out_dir, dist, observer)
        log.line(f"failed at step {step}: {type(exc).__name__}: {exc}")
        log.close()
        raise
    final_dir = None
    if status in ("completed", "converged"):
        final_dir = out_dir / ckpt.FINAL_NAME
        save(final_dir)
    if store is not None:
        store.finish_run(run_id, status)
    log.line(
        f"{status} after {step} steps" + (f"; final checkpoint {final_dir}" if final_dir else "")
    )
    log.close()
    if tensorboard is not None:
        tensorboard.close()
    if isinstance(sampler, VllmEngine):
        dist.barrier()  # vLLM's shutdown also ends the launcher's process group
        sampler.close()
    dist.close()  # every rank leaves together (see Dist.close)
    return TrainResult(run_id, status, step, final_dir, db_path, history, interrupt.signum, note)


def _check_sandbox(config: Config, samples: list[dict[str, Any]], observer) -> None:
    """Before any work: code tasks need the sandbox (or the explicit opt-in to rlimits only,
    said at every start)."""
    sandbox.allow_rlimits_only(config.reward.sandbox == sandbox.WEAK)
    status = require_sandbox_for({s["task_type"] for s in samples})
    if status is not None:
        warning = "WARNING: " if not status.startswith("bubblewrap") else ""
        observer.message(f"{warning}sandbox for code rewards: {status}")


def _rescue(step, start, save, stream, generator, rng, optimizer, out_dir, dist, observer):
    """Something failed after this run trained: keep what it trained. Between steps
    (``start`` None), or inside a step whose optimiser had not yet moved, the weights and
    optimiser are the last good state: with the step's data position and random streams put
    back, it is saved as step ``step``'s checkpoint (what ``--resume`` picks up). Otherwise
    (or under several processes, where a save is a collective the failed rank cannot join)
    the latest checkpoint is named."""
    target = ckpt.step_dir(out_dir, step)
    latest = ckpt.latest_checkpoint(out_dir)
    intact = start is None or _optimizer_steps(optimizer) == start.optimizer_steps
    if not dist.active and intact:
        if latest != target:
            if start is not None:
                start.restore(stream, generator, rng)
            try:
                save(target)
            except Exception as exc:  # noqa: BLE001  (the original error is the one to raise)
                observer.message(f"could not save the last good state ({exc})")
                return
        observer.message(
            f"saved the last good state (step {step}) to {target}; continue: "
            f"{resume_command(out_dir)}"
        )
    elif latest is not None:
        observer.message(
            f"the failed step had started to update the weights; the latest checkpoint is "
            f"{latest}; continue from it: {resume_command(out_dir)}"
        )


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
