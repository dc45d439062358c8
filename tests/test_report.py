"""`dapo report`: one self-contained HTML page from the store (an ablation's table beside the
paper's and its overlaid curves, a run's curves, the evals), PNGs on request, one clear line
without matplotlib or without runs, and a page that headless Chromium loads with every plot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from helpers import make_config
from typer.testing import CliRunner

from dapo_cli.ablation import run_ablation
from dapo_cli.cli.app import app
from dapo_cli.config import AblationSettings, EvalSettings
from dapo_cli.evaluate import evaluate_models
from dapo_cli.report import build_report, mean_band, render_html
from dapo_cli.run import run_training
from dapo_cli.samples import load_samples
from dapo_cli.store import Store

pytest.importorskip("matplotlib", reason="dapo report needs the report extra (matplotlib)")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """A store holding a 2-rung, 2-seed ablation, one training run and one eval outside it."""
    root = tmp_path_factory.mktemp("report")
    data = root / "parity.jsonl"
    rows = [
        {"task_type": "test-parity", "prompt": f"Tell me about the number {i}.", "answer": "x",
         "split": "test" if i % 5 == 0 else "train"}
        for i in range(50)
    ]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = root / "d.db"
    base = make_config(root / "base", data, "train.steps=2", f"output.db_path={db}")
    settings = AblationSettings(rungs=["grpo", "clip-higher"], seeds=2, steps=2, evals=2,
                                eval_prompts=3, k=2)  # fmt: skip
    run_ablation(base, settings, root / "abl", db)
    lone = run_training(make_config(root / "lone", data, f"output.db_path={db}"))
    held_out, _ = load_samples(data, split="test")
    evaluate_models([str(lone.final_dir)], held_out[:3], EvalSettings(k=2), db_path=db)
    return db


def test_the_report_has_the_ablation_table_its_curves_a_run_and_the_evals(store_path):
    with Store(store_path, create=False) as store:
        sections = build_report(store)
    titles = [s.title for s in sections]
    assert titles[0].startswith("Ablation ") and titles[1].startswith("Run ")
    assert titles[-1] == "Evaluations" and len(titles) == 3
    ablation = sections[0]
    for text in ("naive GRPO", "+ clip-higher", "starting model", "paper: AIME24 avg@32",
                 "<td>30</td>", "<td>38</td>", "± "):  # fmt: skip
        assert text in ablation.html, text
    assert [p.name for p in ablation.plots] == ["heldout", "training"]
    assert len(sections[1].plots) == 1
    page = render_html(sections, "t")
    assert page.count('<img class="plot"') == 3 and "http" not in page  # nothing fetched
    assert all(p.png.startswith(b"\x89PNG") for s in sections for p in s.plots)


def test_mean_band_averages_seeds_at_the_steps_they_share():
    steps, means, stds = mean_band([([1, 2, 3], [1.0, 2.0, 3.0]), ([1, 2], [3.0, 4.0])])
    assert steps == [1, 2] and means == [2.0, 3.0]
    assert stds == pytest.approx([2**0.5, 2**0.5])


def test_cli_report_writes_the_page_and_pngs(store_path, tmp_path):
    out, pngs = tmp_path / "r.html", tmp_path / "png"
    args = ["report", "--db-path", str(store_path), "--output", str(out), "--png", str(pngs)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "3 sections, 3 plots" in result.output
    assert sorted(p.name for p in pngs.iterdir()) == [
        "00-heldout.png", "00-training.png", f"01-run-{_lone_run(store_path)[:8]}.png",
    ]  # fmt: skip
    assert out.stat().st_mode & 0o044 == 0o044  # readable by others, as any report
    with Store(store_path, create=False) as store:
        experiment = store.experiments()[0]["id"]
    only = CliRunner().invoke(app, [*args[:3], "--output", str(tmp_path / "one.html"),
                                    "--experiment", experiment[:6]])  # fmt: skip
    assert only.exit_code == 0 and "1 section, 2 plots" in only.output


def _lone_run(db) -> str:
    with Store(db, create=False) as store:
        filed = {r["run_id"] for e in store.experiments() for r in store.experiment_runs(e["id"])}
        return next(r["id"] for r in store.runs("train") if r["id"] not in filed)


def test_report_errors_are_one_line(tmp_path, store_path, monkeypatch):
    empty = tmp_path / "empty.db"
    Store(empty).close()
    result = CliRunner().invoke(app, ["report", "--db-path", str(empty)])
    assert result.exit_code == 1 and "no runs to report yet" in result.output
    missing = CliRunner().invoke(app, ["report", "--db-path", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "no database here yet" in missing.output
    bad = CliRunner().invoke(app, ["report", "--db-path", str(store_path), "--run", "zzz"])
    assert bad.exit_code == 1 and "no run with id 'zzz'" in bad.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    result = CliRunner().invoke(app, ["report", "--db-path", str(store_path)])
    assert result.exit_code == 1
    assert result.output.strip().endswith("pip install 'dapo-cli[report]'")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
addEventListener('error', () => { const d = document.documentElement.dataset;
  d.errors = +(d.errors || 0) + 1; }, true);
addEventListener('load', () => { const d = document.documentElement.dataset;
  const imgs = [...document.images];
  d.images = imgs.length; d.drawn = imgs.filter(i => i.complete && i.naturalWidth > 0).length; });
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt install chromium)")
def test_chromium_loads_the_page_with_every_plot(store_path, tmp_path):
    with Store(store_path, create=False) as store:
        page = render_html(build_report(store), "report")
    probed = tmp_path / "probed.html"  # the page with a listener that counts what loaded
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-images="3"' in root and 'data-drawn="3"' in root, root
    assert "data-errors" not in root, root
    shot = tmp_path / "shot.png"
    (tmp_path / "page.html").write_text(page)
    subprocess.run(
        [*flags, "--window-size=1280,2400", f"--screenshot={shot}",
         (tmp_path / "page.html").as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
