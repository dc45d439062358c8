"""How long-running library work reports progress, without importing torch: the CLI
subclasses ``TrainObserver`` to render with rich; the default says nothing."""

from __future__ import annotations


class TrainObserver:
    def message(self, text: str) -> None: ...

    def sft_step(self, step: int, total: int, loss: float) -> None: ...

    def train_step(self, step: int, total: int, metrics: dict[str, float]) -> None: ...
