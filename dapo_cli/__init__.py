"""dapo_cli: fine-tune language models with DAPO from one command.

The public API is re-exported here; importing it does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from dapo_cli.datagen import generate_dataset
from dapo_cli.errors import DapoError, DataError
from dapo_cli.records import read_records, write_records
from dapo_cli.rewards import register_verifier, score
from dapo_cli.tasks import TASKS, Score, Task, register_task

__all__ = [
    "TASKS",
    "DapoError",
    "DataError",
    "Score",
    "Task",
    "__version__",
    "generate_dataset",
    "read_records",
    "register_task",
    "register_verifier",
    "score",
    "write_records",
]
