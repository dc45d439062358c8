"""`dapo ablate`: each rung is exactly the paper's switch set, every run shares the start and
the budget, runs and evals are filed under one experiment, an interrupted ablation resumes
where it stopped, and the summary is computed from what the store holds."""

from __future__ import annotations

import json
import os
import signal

import pytest
from helpers import make_config  # noqa: F401  (registers the test-parity verifier)
from typer.testing import CliRunner

from dapo_cli import ablation
from dapo_cli.ablation import LADDER, AblationObserver, run_ablation, rung_switches
from dapo_cli.cli.app import app
from dapo_cli.config import AblationSettings, load_config
from dapo_cli.errors import DapoError
from dapo_cli.run import run_training
from dapo_cli.store import Store

# the paper's Table 1, row by row: (overlong filtering, eps_high, soft overlong punishment,
# loss aggregation, dynamic sampling); eps_low stays 0.2 throughout
PAPER_ROWS = {
    "grpo": (False, 0.2, False, "seq-mean-token-mean", False),
    "overlong-filtering": (True, 0.2, False, "seq-mean-token-mean", False),
    "clip-higher": (True, 0.28, False, "seq-mean-token-mean", False),
    "soft-overlong": (True, 0.28, True, "seq-mean-token-mean", False),
    "token-loss": (True, 0.28, True, "token-mean", False),
    "dynamic-sampling": (True, 0.28, True, "token-mean", True),
}


def test_each_rung_is_exactly_the_papers_switch_set():
    algorithm = load_config().algorithm
    assert [r.name for r in LADDER] == list(PAPER_ROWS)
    assert [r.paper_aime24 for r in LADDER] == [30, 36, 38, 41, 42, 50]
    for name, row in PAPER_ROWS.items():
        switches = rung_switches(name, algorithm)
        got = (switches["overlong_filtering"], switches["eps_high"],
               switches["soft_overlong_punishment"], switches["loss_agg"],
               switches["dynamic_sampling"])  # fmt: skip
        assert got == row, name
    # the top rung is the default config: full DAPO
    top = rung_switches("dynamic-sampling", algorithm)
    assert all(getattr(algorithm, key) == value for key, value in top.items())


def test_a_rung_changes_only_its_switches_and_shares_start_seed_and_budget(tmp_path):
    base = load_config(None, ["train.lr=3e-4", "rollout.group_size=4", "train.steps=10",
                              "train.train_batch_size=2", "train.mini_batch_size=1",
                              "algorithm.eps_high=0.3"])  # fmt: skip
    settings = AblationSettings(steps=6, evals=3, budget="samples")
    cfg = ablation.run_config(
        base, "clip-higher", 4, settings, "start/model", tmp_path, tmp_path / "d.db"
    )
    assert cfg.algorithm.eps_high == 0.3 and cfg.algorithm.loss_agg == "seq-mean-token-mean"
    assert cfg.train.lr == 3e-4 and cfg.rollout.group_size == 4  # the rest is the config's
    assert cfg.train.seed == 4 and cfg.train.steps == 6
    assert cfg.train.max_samples == 6 * 2 * 4  # what naive GRPO generates in 6 steps
    assert cfg.model.name == "start/model" and cfg.warm_start.enabled == "off"
    assert cfg.output.save_every == 2 and cfg.output.keep_checkpoints == 0
    steps_budget = ablation.run_config(
        base, "grpo", 0, AblationSettings(), "m", tmp_path, tmp_path / "d.db"
    )
    assert steps_budget.train.steps == 10 and steps_budget.train.max_samples == 0
    with pytest.raises(DapoError, match="unknown nope"):
        ablation.parse_rungs(["grpo", "nope"])
    assert ablation.parse_rungs(["dynamic-sampling", "grpo"]) == ["grpo", "dynamic-sampling"]


def test_max_samples_stops_a_run_counting_dynamic_samplings_extra_batches(tmp_path, data_file):
    cfg = make_config(tmp_path, data_file, "train.steps=50", "train.max_samples=40")
    result = run_training(cfg)
    generated = [h["responses_generated"] for h in result.history]
    assert all(g % 16 == 0 for g in generated)  # whole generation batches of 4 prompts x G 4
    assert sum(generated[:-1]) < 40 <= sum(generated)  # stopped at the step that reached it
    assert result.status == "completed" and result.final_dir is not None


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """Parity prompts (an even-length response is correct) with a held-out split."""
    path = tmp_path_factory.mktemp("abl") / "parity.jsonl"
    rows = [
        {"task_type": "test-parity", "prompt": f"Tell me about the number {i}.", "answer": "x",
         "split": "test" if i % 5 == 0 else "train"}
        for i in range(50)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_base(tmp_path, data):
    cfg = make_config(tmp_path, data, "train.steps=2")
    cfg.data.path = str(data)
    return cfg


SMALL = dict(seeds=2, steps=2, evals=2, eval_prompts=3, k=2)


def test_an_ablation_files_every_run_and_eval_under_one_experiment(tmp_path, split_data):
    settings = AblationSettings(rungs=["grpo", "dynamic-sampling"], **SMALL)
    db = tmp_path / "d.db"
    result = run_ablation(small_base(tmp_path, split_data), settings, tmp_path, db)
    assert result.status == "completed"
    with Store(db) as store:
        filed = store.experiment_runs(result.experiment_id)
        trains = [(r["rung"], r["seed"]) for r in filed if r["role"] == "train"]
        assert trains == [("grpo", 0), ("dynamic-sampling", 0), ("grpo", 1),
                          ("dynamic-sampling", 1)]  # fmt: skip
        evals = sorted((r["rung"], r["seed"], r["step"]) for r in filed if r["role"] == "eval")
        assert evals == sorted(
            [("start", 0, 0)]  # one starting model for every rung and seed
            + [(rung, s, step) for rung in ("grpo", "dynamic-sampling") for s in (0, 1)
               for step in (1, 2)]
        )  # fmt: skip
        for r in filed:
            if r["role"] == "train":
                cfg = store.get_run(r["run_id"])["config"]
                assert cfg["train"]["seed"] == r["seed"]
                assert cfg["algorithm"]["dynamic_sampling"] == (r["rung"] == "dynamic-sampling")
        assert store.get_experiment(result.experiment_id)["status"] == "completed"
    rows = {r["rung"]: r for r in result.rows}
    assert list(rows) == ["start", "grpo", "dynamic-sampling"]
    assert rows["grpo"]["seeds"] == 2 and rows["grpo"]["steps"] == 2
    assert rows["grpo"]["samples"] == 2 * 2 * 4  # train_batch_size 2 x G 4 per step, no extra
    assert 0 <= rows["grpo"]["avg"][0] <= 1 and rows["grpo"]["avg"][1] >= 0
    # only the final checkpoint stays once a run is evaluated
    assert sorted(p.name for p in (tmp_path / "runs" / "grpo-s0").glob("step_*")) == []


class InterruptAt(AblationObserver):
    """Sends this process SIGINT during the given run's first step (as Ctrl-C would)."""

    def __init__(self, stage: str):
        self.stage_name, self.current, self.stages = stage, "", []

    def stage(self, text: str) -> None:
        self.current = text
        self.stages.append(text)

    def train_step(self, step, total, metrics) -> None:
        if self.current == self.stage_name and step == 1:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_ablation_resumes_where_it_stopped(tmp_path, split_data):
    settings = AblationSettings(rungs=["grpo", "clip-higher"], **{**SMALL, "seeds": 1})
    base, db = small_base(tmp_path, split_data), tmp_path / "d.db"
    cut = InterruptAt("clip-higher seed 0: training")
    first = run_ablation(base, settings, tmp_path, db, cut)
    assert first.status == "interrupted"
    with Store(db) as store:
        assert store.get_experiment(first.experiment_id)["status"] == "interrupted"
        before = store.experiment_runs(first.experiment_id)
    assert (tmp_path / "runs" / "clip-higher-s0" / "step_000001").is_dir()

    again = InterruptAt("no stage")  # records the stages, interrupts nothing
    second = run_ablation(base, settings, tmp_path, db, again)
    assert second.status == "completed" and second.experiment_id == first.experiment_id
    assert "grpo seed 0: trained (completed), skipped" in again.stages
    assert "clip-higher seed 0: resuming" in again.stages
    assert not any("grpo seed 0: held-out eval" in s for s in again.stages)  # not redone
    with Store(db) as store:
        after = store.experiment_runs(first.experiment_id)
        trains = [r for r in after if r["role"] == "train"]
        assert len(trains) == 2 and all(r["status"] == "completed" for r in trains)
        cut_run = [r["run_id"] for r in before if r["rung"] == "clip-higher"]
        assert [r["run_id"] for r in trains if r["rung"] == "clip-higher"] == cut_run
        steps = [m["step"] for m in store.metrics(cut_run[0], "reward_mean")]
        assert steps == [1, 2]  # continued from its checkpoint, no step twice


def test_resuming_with_other_settings_is_refused(tmp_path, split_data):
    settings = AblationSettings(rungs=["grpo"], **{**SMALL, "seeds": 1, "steps": 1})
    base, db = small_base(tmp_path, split_data), tmp_path / "d.db"
    run_ablation(base, settings, tmp_path, db)
    settings.k = 4
    with pytest.raises(DapoError, match=r"other settings \(k differ\)"):
        run_ablation(base, settings, tmp_path, db)


def test_cli_ablate_prints_the_table_and_report_draws_it(tmp_path, split_data):
    work = tmp_path / "abl"
    args = ["ablate", "--data", str(split_data), "--workdir", str(work), "--rungs",
            "grpo,token-loss", "--seeds", "1", "--steps", "2", "--evals", "1",
            "--eval-prompts", "3", "--k", "2", "--set", "warm_start.enabled=off",
            "--set", "rollout.group_size=4", "--set", "rollout.max_new_tokens=8",
            "--set", "algorithm.overlong_cache_len=2", "--set", "train.train_batch_size=2",
            "--set", "train.gen_batch_size=4", "--set", "train.mini_batch_size=1"]  # fmt: skip
    result = CliRunner().invoke(app, args, terminal_width=220)
    assert result.exit_code == 0, result.output
    for text in ("ablation: final held-out accuracy", "naive GRPO", "+ token-level loss",
                 "starting model", "paper: AIME24", "dapo report --db-path"):  # fmt: skip
        assert text in result.output, text
    bad = CliRunner().invoke(app, [*args[:5], "--rungs", "grpo,nope"])
    assert bad.exit_code == 1 and "unknown nope" in bad.output


def test_cli_ablate_refuses_a_missing_model_or_data_before_any_work(tmp_path):
    for flags in (["--model", str(tmp_path / "no-model")], ["--data", str(tmp_path / "no.jsonl")]):
        work = tmp_path / "abl"
        result = CliRunner().invoke(app, ["ablate", "--workdir", str(work), *flags])
        assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
        assert not work.exists()  # no store, no generated data, no warm start


def test_a_second_ablation_in_a_busy_workdir_is_refused(tmp_path, split_data):
    work = tmp_path / "abl"
    work.mkdir()
    args = ["ablate", "--data", str(split_data), "--workdir", str(work), "--seeds", "1"]
    with ablation.workdir_lock(work):  # as a first `dapo ablate` holds it
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"another dapo ablate is running here (pid {os.getpid()})" in result.output
    assert not (work / "dapo.db").exists()
