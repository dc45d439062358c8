"""The plain-text log of a run: what a user greps after the fact (the original project's
``logs/``). Every run (train, sft, eval) appends to ``<store folder>/logs/<kind>-<run id>.log``:
each message with its time, and each step's metrics as ``key=value`` pairs. A resumed training
run appends to the log of its run.

``LoggedObserver`` tees what the library reports (``TrainObserver``) into the log, so the CLI
renders as before and the file gets the same lines, without colour or progress bars.
"""

from __future__ import annotations

import time
from pathlib import Path

from dapo_cli.observer import TrainObserver


def log_path(db_path: str | Path, kind: str, run_id: str) -> Path:
    return Path(db_path).parent / "logs" / f"{kind}-{run_id}.log"


def metrics_text(metrics: dict[str, float]) -> str:
    """``reward_mean=0.25 accuracy=0.5 ...``: every metric, in a form grep and awk read."""
    return " ".join(f"{k}={v:.6g}" for k, v in metrics.items())


class RunLog:
    """Lines with a timestamp, kept in memory until the run's file is known (``open``), then
    appended and flushed one by one."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._file = None
        self._pending: list[str] = []

    def open(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed by close())
        self.path = path
        for line in self._pending:
            self._write(line)
        self._pending.clear()
        return path

    def line(self, text: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        if self._file is None:
            self._pending.append(stamped)
        else:
            self._write(stamped)

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LoggedObserver(TrainObserver):
    """Reports to ``inner`` (e.g. the CLI's rich observer) and to ``log``."""

    def __init__(self, inner: TrainObserver, log: RunLog):
        self.inner, self.log = inner, log

    def message(self, text: str) -> None:
        self.log.line(text)
        self.inner.message(text)

    def sft_step(self, step: int, total: int, loss: float) -> None:
        self.log.line(f"sft step {step}/{total} loss={loss:.6g}")
        self.inner.sft_step(step, total, loss)

    def train_step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.log.line(f"step {step}/{total} {metrics_text(metrics)}")
        self.inner.train_step(step, total, metrics)
