"""The DAPO paper's ablation (its Table 1) on your own model, data and settings.

The ladder starts at naive GRPO and adds one technique per rung, cumulatively, as the paper's
rows do: overlong filtering, clip-higher, soft overlong punishment, the token-level loss,
dynamic sampling (= DAPO). ``run_ablation`` trains every chosen rung for every seed from the
same starting model at an equal budget (rollout steps, or generated samples), evaluates each
run's checkpoints and the starting model on the same held-out prompts, and files every run
and eval under one experiment in the store. Rerunning the same ablation in the same workdir
resumes it: finished runs and evals are skipped, an interrupted run continues from its
latest checkpoint.

Layout of a workdir: ``dapo.db`` (the store, unless --db-path), ``data/`` (generated data
when none is given), ``runs/<rung>-s<seed>/`` (each run's output_dir).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapo_cli.config import AblationSettings, AlgorithmConfig, Config, EvalSettings, validate
from dapo_cli.errors import DapoError
from dapo_cli.observer import TrainObserver


@dataclass(frozen=True)
class Rung:
    name: str  # what --rungs takes
    label: str  # the paper's row
    paper_aime24: int  # that row's AIME 2024 avg@32 in the paper's Table 1 (Qwen2.5-32B)


LADDER = (
    Rung("grpo", "naive GRPO", 30),
    Rung("overlong-filtering", "+ overlong filtering", 36),
    Rung("clip-higher", "+ clip-higher", 38),
    Rung("soft-overlong", "+ soft overlong punishment", 41),
    Rung("token-loss", "+ token-level loss", 42),
    Rung("dynamic-sampling", "+ dynamic sampling (= DAPO)", 50),
)
RUNG_NAMES = tuple(r.name for r in LADDER)
START = "start"  # the rung name under which the starting model's evals are filed
EXPERIMENT_KIND = "ablation"


def rung(name: str) -> Rung:
    return LADDER[RUNG_NAMES.index(name)]


def rung_switches(name: str, algorithm: AlgorithmConfig) -> dict[str, Any]:
    """The five technique switches (``algorithm.*``) at rung ``name``: every technique up to
    and including this rung's on, the later ones at naive GRPO's values. Clip-higher on is
    ``algorithm.eps_high`` (the paper's 0.28 by default); off, the clip is symmetric
    (eps_high = eps_low). Every other field is the config's own."""
    level = RUNG_NAMES.index(name)

    def on(technique: str) -> bool:
        return level >= RUNG_NAMES.index(technique)

    return {
        "overlong_filtering": on("overlong-filtering"),
        "eps_high": algorithm.eps_high if on("clip-higher") else algorithm.eps_low,
        "soft_overlong_punishment": on("soft-overlong"),
        "loss_agg": "token-mean" if on("token-loss") else "seq-mean-token-mean",
        "dynamic_sampling": on("dynamic-sampling"),
    }


def parse_rungs(names: list[str]) -> list[str]:
    """--rungs as given (empty: the whole ladder), checked and put in ladder order."""
    unknown = [n for n in names if n not in RUNG_NAMES]
    if unknown:
        raise DapoError(f"--rungs: unknown {', '.join(unknown)} (known: {', '.join(RUNG_NAMES)})")
    return [n for n in RUNG_NAMES if n in names] if names else list(RUNG_NAMES)


def samples_budget(config: Config, steps: int) -> int:
    """Generated responses naive GRPO spends in ``steps`` rollout steps (train_batch_size
    prompts x G each, no over-sampling): every rung's budget under --budget samples."""
    return steps * config.train.train_batch_size * config.rollout.group_size


def eval_every(steps: int, evals: int) -> int:
    """Checkpoint spacing for ``evals`` evenly spaced held-out evaluations along a run."""
    return max(1, math.ceil(steps / evals))


def run_config(
    base: Config, name: str, seed: int, settings: AblationSettings, start_model: str,
    out_dir: Path, db_path: Path,
) -> Config:  # fmt: skip
    """One rung's training config: ``base`` with the rung's switches, the seed, the budget,
    the shared starting model (no second warm start) and checkpoints every eval point."""
    cfg = copy.deepcopy(base)
    for key, value in rung_switches(name, base.algorithm).items():
        setattr(cfg.algorithm, key, value)
    steps = settings.steps or base.train.steps
    cfg.train.seed = seed
    cfg.train.steps = steps
    cfg.train.max_samples = samples_budget(base, steps) if settings.budget == "samples" else 0
    cfg.model.name = start_model
    cfg.warm_start.enabled = "off"
    cfg.output.output_dir = str(out_dir)
    cfg.output.save_every = eval_every(steps, settings.evals)
    cfg.output.keep_checkpoints = 0  # every eval point kept until it is evaluated
    cfg.output.db_path = str(db_path)
    return validate(cfg)


def recorded_settings(base: Config, settings: AblationSettings, rungs: list[str]) -> dict:
    """What defines an experiment: resuming it with anything else would mix two."""
    return {
        "config": base.to_dict(), "rungs": rungs, "seeds": settings.seeds,
        "first_seed": settings.first_seed, "steps": settings.steps or base.train.steps,
        "budget": settings.budget, "evals": settings.evals,
        "eval_prompts": settings.eval_prompts, "eval_split": settings.eval_split,
        "k": settings.k,
    }  # fmt: skip


class AblationObserver(TrainObserver):
    """What the CLI is told: the TrainObserver callbacks of each run, plus where the
    ablation is (``stage``: a run starting or skipped)."""

    def stage(self, text: str) -> None: ...


@dataclass
class AblationResult:
    experiment_id: str
    db_path: Path
    status: str  # completed | interrupted
    rows: list[dict[str, Any]] = field(default_factory=list)  # summary_rows()


def run_ablation(
    base: Config,
    settings: AblationSettings,
    workdir: Path,
    db_path: Path,
    observer: AblationObserver | None = None,
) -> AblationResult:
    """Run (or resume) the ablation of ``base`` as ``settings`` say, in ``workdir``, the
    held-out prompts from ``base.data.path``. Returns the summary (see ``summary_rows``).
    One process per workdir: a second one is refused while the first runs."""
    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir):
        return _ablate(base, settings, workdir, db_path, observer)


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """Hold ``workdir`` for this process (an advisory lock the OS drops when the process
    ends, however it ends): two ablations in one workdir would train into the same
    checkpoint folders."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(workdir / ".ablate.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise DapoError(
                f"{workdir}: another dapo ablate is running here (pid {holder}); wait for it, "
                "or use another --workdir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _ablate(  # the ablation top to bottom: experiment, then per seed, per rung
    base: Config,
    settings: AblationSettings,
    workdir: Path,
    db_path: Path,
    observer: AblationObserver | None,
) -> AblationResult:
    from dapo_cli.run import run_training
    from dapo_cli.store import Store

    observer = observer or AblationObserver()
    settings.check()
    rungs = parse_rungs(settings.rungs)
    if base.algorithm.eps_high == base.algorithm.eps_low and "clip-higher" in rungs:
        observer.message("algorithm.eps_high = eps_low: the clip-higher rung changes nothing")
    recorded = recorded_settings(base, settings, rungs)
    store = Store(db_path)
    experiment_id = open_experiment(store, str(workdir.resolve()), recorded, observer)
    eval_samples = held_out_samples(base, settings)
    evaluation = eval_settings(base, settings)
    seeds = range(settings.first_seed, settings.first_seed + settings.seeds)
    try:
        start_model = starting_model(base, settings.first_seed, observer)  # one for all runs
        evaluate_points(store, experiment_id, START, settings.first_seed, {0: start_model},
                        eval_samples, evaluation, db_path, observer)  # fmt: skip
        for seed in seeds:
            for name in rungs:
                out_dir = workdir / "runs" / f"{name}-s{seed}"
                cfg = run_config(base, name, seed, settings, start_model, out_dir, db_path)
                train_id = train_rung(store, experiment_id, name, seed, cfg, observer, run_training)
                if train_id is None:  # interrupted
                    store.set_experiment_status(experiment_id, "interrupted")
                    return AblationResult(experiment_id, db_path, "interrupted")
                points = checkpoints_to_evaluate(out_dir)
                evaluate_points(store, experiment_id, name, seed, points, eval_samples,
                                evaluation, db_path, observer)  # fmt: skip
                prune_evaluated(out_dir)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        store.set_experiment_status(experiment_id, "interrupted" if interrupted else "failed")
        raise
    store.set_experiment_status(experiment_id, "completed")
    rows = summary_rows(store, experiment_id)
    return AblationResult(experiment_id, db_path, "completed", rows)


def open_experiment(store, name: str, recorded: dict, observer) -> str:
    """The experiment this workdir holds (resumed; its settings must match), else a new one."""
    existing = [e for e in store.experiments(name) if e["kind"] == EXPERIMENT_KIND]
    if not existing:
        return store.start_experiment(EXPERIMENT_KIND, name, recorded)
    experiment = existing[-1]
    wanted = _json_round_trip(recorded)  # as the store gives it back
    if experiment["settings"] != wanted:
        differ = sorted(k for k in wanted if wanted[k] != experiment["settings"].get(k))
        raise DapoError(
            f"{name} holds ablation {experiment['id'][:8]} with other settings "
            f"({', '.join(differ)} differ); rerun it as it was to resume it, or use another "
            "--workdir"
        )
    store.set_experiment_status(experiment["id"], "running")
    observer.message(f"resuming ablation {experiment['id'][:8]} ({experiment['status']})")
    return experiment["id"]


def _json_round_trip(value: dict) -> dict:
    import json

    return json.loads(json.dumps(value, sort_keys=True, default=str))


def check_inputs(base: Config, settings: AblationSettings) -> None:
    """Fail before any work (no workdir, store or generated data) on a missing local model or
    data that cannot be read or has no held-out prompts."""
    from dapo_cli.models import resolve_model_source

    if base.model.name:
        resolve_model_source(base.model.name)
    if base.data.path:
        held_out_samples(base, settings)


def held_out_samples(base: Config, settings: AblationSettings) -> list[dict[str, Any]]:
    """The prompts every run is judged on: the first ``eval_prompts`` of the data's held-out
    split, filtered as training filters (data.task_types)."""
    from dapo_cli.samples import load_samples

    d = base.data
    samples, _ = load_samples(
        d.path, d.db_path, split=settings.eval_split, task_types=d.task_types or None,
        limit=settings.eval_prompts, fmt=d.format, fields=(d.prompt_field, d.answer_field),
        hub_config=d.hub_config,
    )  # fmt: skip
    return samples


def eval_settings(base: Config, settings: AblationSettings) -> EvalSettings:
    """The held-out evaluation every run shares: the paper's sampling (temperature 1.0,
    top-p 0.7), the training's length limit, prompts and scoring."""
    d = base.data
    return EvalSettings(
        split=settings.eval_split, k=settings.k, max_new_tokens=base.rollout.max_new_tokens,
        seed=settings.first_seed, limit=settings.eval_prompts, system=d.system_prompt,
        template=d.prompt_template, scoring=base.reward.scoring(), dtype=base.model.dtype,
    ).check()  # fmt: skip


def starting_model(base: Config, seed: int, observer) -> str:
    """What every run starts from: the named model, or the embedded one warm-started as
    ``dapo train`` would with ``seed`` (cached). One start for every rung and seed, so the
    seeds vary the RL alone (data order, sampling), not the warm start, which on its own
    swings held-out accuracy by 20 points between seeds (docs/benchmarks.md)."""
    from dapo_cli.models import embedded_base
    from dapo_cli.run import load_samples, warm_start

    if base.model.name:
        if base.warm_start.enabled == "on":
            raise DapoError(
                "dapo ablate does not warm-start a named model; warm-start it with dapo sft "
                "and pass its output as --model"
            )
        return base.model.name
    if base.warm_start.enabled == "off":
        return str(embedded_base(base.model.embedded_size))
    cfg = copy.deepcopy(base)
    cfg.train.seed = seed
    return str(warm_start(cfg, load_samples(cfg, observer), observer))


def train_rung(store, experiment_id: str, name: str, seed: int, cfg: Config, observer,
               run_training) -> str | None:  # fmt: skip
    """The rung's training run: skipped when finished, resumed from its latest checkpoint
    when one was left, else started afresh (a folder left without a checkpoint is cleared).
    Returns its run id, or None when it was interrupted."""
    from dapo_cli.scale import checkpoint as ckpt

    out_dir = Path(cfg.output.output_dir)
    done = _filed(store, experiment_id, name, seed, "train")
    if done and done[-1]["status"] in ("completed", "converged"):
        observer.stage(f"{name} seed {seed}: trained ({done[-1]['status']}), skipped")
        return done[-1]["run_id"]
    resume = ckpt.resume_point(out_dir) is not None  # the folder is this rung's and seed's
    if not resume and out_dir.exists():
        shutil.rmtree(out_dir)
    observer.stage(f"{name} seed {seed}: " + ("resuming" if resume else "training"))
    result = run_training(cfg, resume=resume, observer=observer)
    store.add_experiment_run(experiment_id, result.run_id, rung=name, seed=seed, role="train")
    return None if result.status == "interrupted" else result.run_id


def _filed(store, experiment_id: str, name: str, seed: int, role: str) -> list[dict]:
    return [
        r for r in store.experiment_runs(experiment_id)
        if r["rung"] == name and r["seed"] == seed and r["role"] == role
    ]  # fmt: skip


def checkpoints_to_evaluate(out_dir: Path) -> dict[int, str]:
    """{step: checkpoint} for a finished run: its step checkpoints and its final one."""
    from dapo_cli.scale import checkpoint as ckpt

    points = {step: str(path) for step, path in ckpt.list_checkpoints(out_dir)}
    final = out_dir / ckpt.FINAL_NAME
    if (final / "config.json").is_file():
        points[int(ckpt.load_trainer_state(final)["step"])] = str(final)
    return dict(sorted(points.items()))


def evaluate_points(  # noqa: PLR0913
    store, experiment_id: str, name: str, seed: int, points: dict[int, str], samples,
    evaluation: EvalSettings, db_path: Path, observer,
) -> None:  # fmt: skip
    """Evaluate each {step: model} not yet evaluated for this rung and seed, filing each."""
    from dapo_cli.evaluate import evaluate_models

    done = {
        r["step"] for r in _filed(store, experiment_id, name, seed, "eval")
        if r["status"] == "completed"
    }  # fmt: skip
    for step, model in points.items():
        if step in done:
            continue
        observer.stage(f"{name} seed {seed}: held-out eval at step {step}")
        _, results = evaluate_models([model], samples, evaluation, db_path=db_path)
        store.add_experiment_run(
            experiment_id, results[0]["run_id"], rung=name, seed=seed, role="eval", step=step
        )


def prune_evaluated(out_dir: Path) -> None:
    """Once evaluated, a finished run keeps only its final checkpoint (and the rest of its
    folder): the step checkpoints were there for the evals."""
    from dapo_cli.scale import checkpoint as ckpt

    if (out_dir / ckpt.FINAL_NAME / "config.json").is_file():
        for _, path in ckpt.list_checkpoints(out_dir):
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- the summary


def experiment_runs(store, experiment_id: str) -> dict[str, dict[int, dict[str, Any]]]:
    """{rung: {seed: {"train": run or None, "evals": {step: metrics}}}} in ladder order."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for row in store.experiment_runs(experiment_id):
        cell = out.setdefault(row["rung"], {}).setdefault(row["seed"], {"train": None, "evals": {}})
        if row["role"] == "train":
            cell["train"] = row
        elif row["status"] == "completed":
            metrics = {m["name"]: m["value"] for m in store.metrics(row["run_id"])}
            cell["evals"][row["step"]] = metrics
    start = [c["evals"][0] for c in out.get(START, {}).values() if 0 in c["evals"]]
    for name, seeds in out.items():  # every run's curve starts at the shared starting model
        for cell in seeds.values():
            if name != START and start:
                cell["evals"].setdefault(0, start[0])
    order = [START, *RUNG_NAMES]
    return {name: out[name] for name in order if name in out}


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary_rows(store, experiment_id: str) -> list[dict[str, Any]]:
    """One row per rung (the starting model first): final held-out avg@k and pass@k, mean
    and std over seeds, steps and generated samples (mean), training wall time (mean), the
    paper's number for that row, and the first step at which the rung's held-out avg@k (mean
    over seeds) reached naive GRPO's final mean."""
    k = store.get_experiment(experiment_id)["settings"]["k"]
    cells = experiment_runs(store, experiment_id)
    curves = {name: eval_curve(seeds, f"all/avg@{k}") for name, seeds in cells.items()}
    grpo = curves.get("grpo")
    grpo_final = grpo["mean"][-1] if grpo and grpo["mean"] else None
    rows = []
    for name, seeds in cells.items():
        finals = [c["evals"][max(c["evals"])] for c in seeds.values() if c["evals"]]
        avg = _mean_std([m.get(f"all/avg@{k}", math.nan) for m in finals])
        pas = _mean_std([m.get(f"all/pass@{k}", math.nan) for m in finals])
        trains = [c["train"] for c in seeds.values() if c["train"]]
        totals = [_train_totals(store, t["run_id"]) for t in trains]
        row = {
            "rung": name, "label": rung(name).label if name != START else "starting model",
            "paper": rung(name).paper_aime24 if name != START else None,
            "seeds": len(finals), "avg": avg, "pass": pas, "k": k,
            "steps": _mean_std([t["steps"] for t in totals])[0],
            "samples": _mean_std([t["samples"] for t in totals])[0],
            "wall_s": _mean_std([t["wall_s"] for t in totals])[0],
            "reached_grpo_at": None,
        }  # fmt: skip
        if grpo_final is not None and name != START:
            curve = curves[name]
            hits = [
                s for s, v in zip(curve["steps"], curve["mean"], strict=False) if v >= grpo_final
            ]
            row["reached_grpo_at"] = hits[0] if hits else None
        rows.append(row)
    return rows


def table_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The ablation table as text, for the terminal and the report alike: a header and one
    row of cells per rung (accuracies in %, mean ± std over seeds; empty where not known)."""
    k = rows[0]["k"] if rows else 0
    header = ["rung", f"avg@{k} (%)", f"pass@{k} (%)", "seeds", "steps", "samples",
              "train time", "reached GRPO's final at step", "paper: AIME24 avg@32"]  # fmt: skip

    def pm(mean_std: tuple[float, float]) -> str:
        mean, std = mean_std
        return "—" if math.isnan(mean) else f"{mean * 100:.1f} ± {std * 100:.1f}"

    def count(x: float) -> str:
        return "" if math.isnan(x) else f"{x:.0f}"

    def duration(seconds: float) -> str:
        if math.isnan(seconds):
            return ""
        return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

    body = [
        [r["label"], pm(r["avg"]), pm(r["pass"]), str(r["seeds"]), count(r["steps"]),
         count(r["samples"]), duration(r["wall_s"]),
         "" if r["reached_grpo_at"] is None else str(r["reached_grpo_at"]),
         "" if r["paper"] is None else str(r["paper"])]
        for r in rows
    ]  # fmt: skip
    return header, body


def eval_curves(seeds: dict[int, dict[str, Any]], metric: str) -> list[tuple[list, list]]:
    """Each seed's held-out ``metric`` against rollout step: [(steps, values)], seed order."""
    return [
        (sorted(c["evals"]), [c["evals"][s].get(metric, math.nan) for s in sorted(c["evals"])])
        for c in seeds.values()
    ]


def mean_band(curves: list[tuple[list, list]]) -> tuple[list[int], list, list]:
    """Mean and std over curves (seeds) at each step every curve has: (steps, means, stds)."""
    if not curves:
        return [], [], []
    common = sorted(set.intersection(*(set(s) for s, _ in curves)))
    at = [dict(zip(s, v, strict=False)) for s, v in curves]
    stats = [_mean_std([c[step] for c in at]) for step in common]
    return common, [m for m, _ in stats], [s for _, s in stats]


def eval_curve(seeds: dict[int, dict[str, Any]], metric: str) -> dict[str, list[float]]:
    """Held-out ``metric`` against rollout step, mean and std over the seeds that have
    every step (the starting model is step 0)."""
    steps, means, stds = mean_band(eval_curves(seeds, metric))
    return {"steps": steps, "mean": means, "std": stds}


def _train_totals(store, run_id: str) -> dict[str, float]:
    """A training run's steps, generated responses and wall time (summed step times)."""
    metrics = store.metrics(run_id)
    steps = {m["step"] for m in metrics}
    samples = sum(m["value"] or 0 for m in metrics if m["name"] == "responses_generated")
    wall = sum(m["value"] or 0 for m in metrics if m["name"] == "step_time")
    return {"steps": len(steps), "samples": samples, "wall_s": wall}
