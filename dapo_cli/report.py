"""`dapo report`: one self-contained HTML page drawn from the store (plots embedded as PNG
data, no network), and each plot as a PNG file when asked.

What it shows:
- for an experiment (``dapo ablate``): the ablation table beside the paper's Table 1, the
  held-out accuracy of every rung against rollout step, and every training curve with the
  rungs overlaid (mean over seeds, a band of ± one std);
- for a training run not in an experiment: its training curves;
- the eval runs not in an experiment, as a table.

Plots use matplotlib (the ``report`` extra: pip install 'dapo-cli[report]').
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapo_cli.ablation import (
    START,
    eval_curves,
    experiment_runs,
    mean_band,
    rung,
    summary_rows,
    table_cells,
)
from dapo_cli.errors import DapoError

# (panel title, metrics drawn in it); a metric no run logged is left out
TRAIN_PANELS = (
    ("reward (mean)", ("reward_mean",)),
    ("accuracy (training samples)", ("accuracy",)),
    ("entropy (nats per token)", ("entropy",)),
    ("response length (tokens)", ("response_length_mean",)),
    ("truncation rate", ("truncation_rate",)),
    ("clip fraction", ("clip_frac_low", "clip_frac_high")),
    ("groups filtered (no signal)", ("groups_filtered",)),
    ("generation batches per step", ("gen_batches",)),
)
# where a training metric can lie, so a band of ± one std stays inside it (reward may be < 0)
RATES = {"accuracy", "truncation_rate", "clip_frac_low", "clip_frac_high", "groups_filtered"}
INSTALL_HINT = "dapo report draws with matplotlib: pip install 'dapo-cli[report]'"


@dataclass
class Plot:
    name: str  # file name stem (--png DIR)
    title: str
    png: bytes


@dataclass
class Section:
    title: str
    html: str  # tables and text
    plots: list[Plot] = field(default_factory=list)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise DapoError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def run_series(store, run_id: str) -> dict[str, tuple[list[int], list[float]]]:
    """A run's metrics as {name: (steps, values)}, NaN (stored as NULL) left out."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for m in store.metrics(run_id):
        if m["value"] is None:
            continue
        steps, values = series.setdefault(m["name"], ([], []))
        steps.append(m["step"])
        values.append(m["value"])
    return series


def _panels(names: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    return [(t, tuple(m for m in ms if m in names)) for t, ms in TRAIN_PANELS if set(ms) & names]


def _grid(n: int):
    plt = _pyplot()
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def run_figure(series: dict[str, tuple[list[int], list[float]]], title: str) -> bytes:
    """One training run's curves, one panel per TRAIN_PANELS entry it logged."""
    panels = _panels(set(series))
    fig, axes = _grid(len(panels))
    for ax, (panel, metrics) in zip(axes, panels, strict=False):
        for metric in metrics:
            steps, values = series[metric]
            ax.plot(steps, values, label=metric if len(metrics) > 1 else None, lw=1.4)
        _style(ax, panel)
        if len(metrics) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _style(ax, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=10)
    ax.set_xlabel("rollout step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _bounds(metric: str) -> tuple[float, float]:
    if metric == "reward_mean":
        return -math.inf, math.inf
    return 0.0, 1.0 if metric in RATES else math.inf


def _band(ax, steps, means, stds, label, color, style="-", bounds=(0.0, math.inf)) -> None:
    ax.plot(steps, means, style, label=label, color=color, lw=1.5)
    lo, hi = bounds
    low = [max(m - s, lo) for m, s in zip(means, stds, strict=False)]
    high = [min(m + s, hi) for m, s in zip(means, stds, strict=False)]
    ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)


def experiment_figures(store, experiment_id: str) -> list[Plot]:
    """The rungs overlaid: held-out avg@k against step, then every training panel (mean
    over seeds, band ± one std); clip fractions drawn low dashed, high solid."""
    plt = _pyplot()
    settings = store.get_experiment(experiment_id)["settings"]
    k = settings["k"]
    cells = experiment_runs(store, experiment_id)
    rungs = [name for name in cells if name != START]
    colors = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(rungs)}
    plots = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, metric in zip(axes, (f"all/avg@{k}", f"all/pass@{k}"), strict=False):
        for name in rungs:
            curves = [c for c in eval_curves(cells[name], metric) if c[0]]  # seeds evaluated
            steps, means, stds = mean_band(curves)
            _band(ax, steps, [m * 100 for m in means], [s * 100 for s in stds],
                  rung(name).label, colors[name], "-o", bounds=(0.0, 100.0))  # fmt: skip
        _style(ax, f"held-out {metric.split('/')[1]} (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    plots.append(Plot("heldout", "held-out accuracy against rollout step", _png(fig)))

    series = {
        name: [run_series(store, c["train"]["run_id"]) for c in cells[name].values()
               if c["train"]]
        for name in rungs
    }  # fmt: skip
    names = set().union(*(s for runs in series.values() for s in runs))
    panels = _panels(names)
    fig, axes = _grid(len(panels))
    for ax, (panel, metrics) in zip(axes, panels, strict=False):
        for name in rungs:
            for metric, style in zip(
                metrics, ("--", "-") if len(metrics) > 1 else ("-",), strict=False
            ):
                curves = [s[metric] for s in series[name] if metric in s]
                steps, means, stds = mean_band(curves)
                label = rung(name).label if metric == metrics[-1] else None
                _band(ax, steps, means, stds, label, colors[name], style, _bounds(metric))
        _style(ax, panel + (" (low dashed, high solid)" if len(metrics) > 1 else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8,
               bbox_to_anchor=(0.5, -0.04))  # fmt: skip
    fig.tight_layout()
    plots.append(Plot("training", "training curves, rungs overlaid", _png(fig)))
    return plots


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ablation_table_html(rows: list[dict[str, Any]]) -> str:
    header, body = table_cells(rows)
    return _table(header, body)


def experiment_section(store, experiment: dict[str, Any]) -> Section:
    s = experiment["settings"]
    cfg = s["config"]
    model = cfg["model"]["name"] or f"embedded {cfg['model']['embedded_size']}"
    budget = "rollout steps" if s["budget"] == "steps" else "steps' worth of naive GRPO's samples"
    rows = summary_rows(store, experiment["id"])
    text = (
        f"<p>Ablation <code>{experiment['id']}</code> ({html.escape(experiment['status'])}, "
        f"started {html.escape(experiment['started_at'])}): {len(s['rungs'])} rungs × "
        f"{s['seeds']} seed(s) from seed {s['first_seed']}, budget: {s['steps']} "
        f"{budget}; model {html.escape(str(model))}"
        f", data {html.escape(str(cfg['data']['path']))}; held-out: {s['eval_prompts'] or 'all'} "
        f"prompts of the {html.escape(s['eval_split'])} split, k = {s['k']}, temperature 1.0, "
        "top-p 0.7. The paper's column is its Table 1 (Qwen2.5-32B on AIME 2024), for the "
        "ordering, not the scale.</p>"
    )
    return Section(
        f"Ablation {experiment['id'][:8]}",
        text + ablation_table_html(rows),
        experiment_figures(store, experiment["id"]),
    )


def run_section(store, run: dict[str, Any]) -> Section:
    cfg = run["config"]
    a = cfg.get("algorithm", {})
    text = (
        f"<p>Training run <code>{run['id']}</code> ({html.escape(run['status'])}), model "
        f"{html.escape(str(run['model']))}, started {html.escape(run['started_at'])}; "
        f"eps_low {a.get('eps_low')}, eps_high {a.get('eps_high')}, loss {a.get('loss_agg')}, "
        f"dynamic sampling {a.get('dynamic_sampling')}, overlong filtering "
        f"{a.get('overlong_filtering')}, soft overlong punishment "
        f"{a.get('soft_overlong_punishment')}.</p>"
    )
    series = run_series(store, run["id"])
    plots = [Plot(f"run-{run['id'][:8]}", "training curves",
                  run_figure(series, f"run {run['id'][:8]}"))] if series else []  # fmt: skip
    return Section(f"Run {run['id'][:8]}", text, plots)


def evals_section(store, runs: list[dict[str, Any]]) -> Section:
    rows = []
    for run in runs:
        metrics = {m["name"]: m["value"] for m in store.metrics(run["id"])}
        k = run["config"].get("k")
        for name in sorted(n for n in metrics if n.endswith(f"/avg@{k}")):
            task = name.split("/")[0]
            passed = metrics.get(f"{task}/pass@{k}")
            rows.append([run["id"][:8], run["model"], run["started_at"][:19], task,
                         run["config"].get("prompts"), k, f"{metrics[name] * 100:.1f}",
                         "" if passed is None else f"{passed * 100:.1f}"])  # fmt: skip
    header = ["run", "model", "started", "task type", "prompts", "k", "avg@k (%)", "pass@k (%)"]
    return Section("Evaluations", _table(header, rows))


def build_report(
    store, experiment_ids: list[str] | None = None, run_ids: list[str] | None = None
) -> list[Section]:
    """The sections: the chosen experiments and runs (ids or unique prefixes), else every
    experiment, every training run outside them and the evals outside them."""
    experiments = store.experiments()
    runs = store.runs()
    filed = {r["run_id"] for e in experiments for r in store.experiment_runs(e["id"])}
    if experiment_ids or run_ids:
        experiments = [_pick(experiments, i, "experiment") for i in experiment_ids or []]
        chosen = [_pick(runs, i, "run") for i in run_ids or []]
        trains = [r for r in chosen if r["kind"] == "train"]
        evals = [r for r in chosen if r["kind"] == "eval"]
    else:
        trains = [r for r in runs if r["kind"] == "train" and r["id"] not in filed]
        evals = [r for r in runs if r["kind"] == "eval" and r["id"] not in filed]
    sections = [experiment_section(store, e) for e in experiments]
    sections += [run_section(store, r) for r in trains]
    if evals:
        sections.append(evals_section(store, evals))
    if not sections:
        raise DapoError(f"{store.path}: no runs to report yet (dapo train, eval or ablate)")
    return sections


def _pick(rows: list[dict[str, Any]], prefix: str, what: str) -> dict[str, Any]:
    found = [r for r in rows if r["id"].startswith(prefix)]
    if len(found) != 1:
        why = "no" if not found else "more than one"
        raise DapoError(f"{why} {what} with id {prefix!r} in the store")
    return found[0]


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
"""


def render_html(sections: list[Section], title: str) -> str:
    """The page: every section's text, tables and plots (PNG data URIs), no external file."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]  # fmt: skip
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>{section.html}")
        for plot in section.plots:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(
                f'<figure><img class="plot" alt="{html.escape(plot.title)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(plot.title)}'
                "</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(sections: list[Section], output: Path, title: str, png_dir: Path | None) -> int:
    """Write the page atomically (and each plot to ``png_dir``); returns the plot count."""
    from dapo_cli.records import atomic_file

    with atomic_file(output) as f:
        f.write(render_html(sections, title).encode("utf-8"))
    plots = [(i, p) for i, s in enumerate(sections) for p in s.plots]
    if png_dir is not None:
        for i, plot in plots:
            with atomic_file(png_dir / f"{i:02d}-{plot.name}.png") as f:
                f.write(plot.png)
    return len(plots)
