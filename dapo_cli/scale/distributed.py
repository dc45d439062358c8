"""Several training processes on ``torch.distributed``, started by ``accelerate launch`` or
``torchrun`` (both set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

How the work is split (see ``step.py``):

- **Generation and scoring are sharded.** Every rank draws the same global generation batch
  from the prompt stream and samples only its contiguous slice of it; the scored rollouts
  are then gathered, in rank order, so every rank holds the same global batch, in the same
  prompt order a single process would have. Dynamic sampling therefore counts informative
  prompts globally, and the group statistics, advantages and stop decisions are the same
  on every rank.
- **The update is data-parallel.** Each mini-batch's rows are split between the ranks; each
  rank back-propagates its share with the token-mean denominator of the *whole* mini-batch
  (every rank holds it, so it is the global token count), and the gradients are summed
  across ranks with one all-reduce (what DDP does), so the optimiser step is the single-
  process step on every rank.
- Only rank 0 writes checkpoints, the database, TensorBoard and the console.

With one process every function here is a no-op, and nothing is initialised.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as td

from dapo_cli.errors import DapoError

GRAD_BUCKET_BYTES = 32 * 2**20  # gradients all-reduced together (DDP's default is 25 MiB)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous slice of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects; tensors go via the CPU)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return bool(t.item() > 0)

    def max_int(self, n: int) -> int:
        """The largest ``n`` over the ranks, on every rank."""
        if not self.active:
            return n
        t = torch.tensor([n], dtype=torch.int64, device=self._device())
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return int(t.item())

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` across ranks, in flat buckets of about
        ``GRAD_BUCKET_BYTES`` (as DDP does; one flat buffer of every gradient would double
        their memory for a moment). Every parameter must have a gradient (zeros on a rank
        that saw no rows: ``step.update`` sets them)."""
        if not self.active:
            return
        limit = GRAD_BUCKET_BYTES
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for i, p in enumerate(params):
            bucket.append(p)
            size += p.grad.numel() * p.grad.element_size()
            if size >= limit or i == len(params) - 1:
                if len(bucket) == 1 and bucket[0].grad.is_contiguous():  # e.g. an embedding
                    td.all_reduce(bucket[0].grad, op=td.ReduceOp.SUM)  # in place, no copy
                    bucket, size = [], 0
                    continue
                flat = torch.cat([q.grad.reshape(-1) for q in bucket])
                td.all_reduce(flat, op=td.ReduceOp.SUM)
                offset = 0
                for q in bucket:
                    n = q.grad.numel()
                    q.grad.copy_(flat[offset : offset + n].view_as(q.grad))
                    offset += n
                bucket, size = [], 0

    def broadcast_params(self, model: torch.nn.Module) -> None:
        """Rank 0's weights on every rank (so all start from exactly the same model)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                td.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            td.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a cache); the others run it after."""
        if self.active and not self.main:
            td.barrier()
        yield
        if self.active and self.main:
            td.barrier()

    def close(self) -> None:
        """Wait for every rank, then tear the process group down. A rank that exits while a
        peer still talks to it can abort in gloo's teardown ("terminate called without an
        active exception"), so every process ends through here."""
        if self.active and td.is_initialized():
            td.barrier()
            td.destroy_process_group()

    def _device(self) -> torch.device:
        if td.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


SINGLE = Dist()


def from_env() -> Dist:
    """The process group described by the launcher's environment, initialised on first use;
    ``SINGLE`` when WORLD_SIZE is unset or 1. NCCL when CUDA is available, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            gpus = torch.cuda.device_count()
            if local_rank >= gpus:  # NCCL needs a GPU of its own per process
                raise DapoError(
                    f"process {local_rank} of this machine has no GPU of its own ({gpus} "
                    f"visible): launch at most {gpus} process(es) per machine, or hide the "
                    "GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU processes"
                )
            torch.cuda.set_device(local_rank)
        td.init_process_group(backend, timeout=timedelta(minutes=60))
    return Dist(rank=td.get_rank(), world=td.get_world_size(), local_rank=local_rank)
