"""The data-parallel world of the engine's own loop (torch.distributed); the ``torchrun`` entry is ``llm.distributed``.

Every rank runs ``llm.training.train`` with a ``World``. Each optimizer step's global batch of ``batch_size x
grad_accum`` pairs (the same seeded order as one process) is cut into contiguous shards, one per rank; a rank
backpropagates ``sum of its losses / global batch size`` over its shard, and the gradients are summed across ranks
(bucketed ``all_reduce``), so every rank holds exactly the gradient of the mean loss over the global batch, as one
process would, and takes the same optimizer step. Rank 0 alone creates the run directory, evaluates the probes and
writes metrics, arrays, checkpoints and the model; the training row's loss and rewards are means over the gathered
global batch. The metrics equal a single-process run with the same global batch up to float summation order.

Backends: gloo on CPU, nccl on GPU (each rank on ``cuda:LOCAL_RANK``). Not covered here: stochastic layers (dropout
masks then differ from one process) and models too big for one device, which this loop does not shard; for those,
train with the transformers Trainer or TRL under accelerate's FSDP and attach ``llm.callback.ProbeCallback`` (it
runs the probe forwards on every rank of a sharded model); see the README's "Multi-GPU" section.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

__all__ = ["World", "SINGLE_PROCESS", "TorchDistributed", "shard_indices", "init_distributed"]

_BUCKET_BYTES = 32 * 2**20  # gradients are summed in flat buckets of about this size


def shard_indices(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Return rank ``rank``'s contiguous shard of ``indices``; sizes differ by at most one, late shards may be empty.

    Concatenating the shards of ranks 0..world_size-1 gives ``indices`` back in order, so gathered per-example
    values line up with the single-process batch.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    base, extra = divmod(len(indices), world_size)
    start = rank * base + min(rank, extra)
    return list(indices[start: start + base + (rank < extra)])


class World:
    """One process: the engine's default. Subclasses implement the same methods over torch.distributed."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's part of a global batch of pair indices."""
        return shard_indices(indices, self.rank, self.world_size)

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum ``p.grad`` over ranks in place (a missing grad counts as zeros)."""

    def gather(self, values: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
        """Concatenate each entry's (N_rank, ...) tensors over ranks in rank order (ranks holding None add nothing)."""
        return dict(values)

    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Copy the main process's parameter values to every rank (identical replicas before the first step)."""

    def broadcast(self, obj: Any) -> Any:
        """Return the main process's ``obj`` on every rank."""
        return obj

    def barrier(self) -> None:
        """Wait until every rank got here."""

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on the main process first, then on the others (e.g. main writes a file, others read it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


#: the single-process world used when ``train`` is called without one.
SINGLE_PROCESS = World()


class TorchDistributed(World):
    """The initialised default process group of torch.distributed (gloo or nccl)."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised: call init_distributed() (under torchrun) first")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []
        size = 0
        for p in params:
            bucket.append(p.grad)
            size += p.grad.numel() * p.grad.element_size()
            if size >= _BUCKET_BYTES:
                self._sum_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._sum_bucket(bucket)

    @staticmethod
    def _sum_bucket(grads: list[torch.Tensor]) -> None:
        flat = torch.cat([g.reshape(-1) for g in grads])  # (P_bucket,) one message instead of one per tensor
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather(self, values: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
        local = {k: None if v is None else v.detach().cpu() for k, v in values.items()}
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, local)  # one message per step: small per-example vectors
        out = {}
        for key in values:
            present = [p[key] for p in parts if p[key] is not None]
            out[key] = torch.cat(present) if present else None
        return out

    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def barrier(self) -> None:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def init_distributed(backend: str = "auto") -> World:
    """Join the process group that ``torchrun`` describes in the environment; a plain process gets SINGLE_PROCESS.

    Args:
        backend: "gloo", "nccl", or "auto" (nccl when CUDA is available, else gloo). With nccl, the process uses
            ``cuda:LOCAL_RANK`` as its current device, so the engine's ``--device cuda``/``auto`` lands there.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE_PROCESS
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or 'auto', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return TorchDistributed()

