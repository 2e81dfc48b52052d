"""Process-group helpers for `torchrun` (DDP). A single process is a world of one.

    dist = Dist.from_env()      # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    dist.is_main                # only rank 0 logs and saves
    dist.all_reduce_sum(t)      # in place; a no-op in a world of one

    torchrun --nproc_per_node 2 -m experiments.run tiny      # gloo on CPU, NCCL on GPUs
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, device_type: str = "cpu") -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not td.is_initialized():
            td.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            td.all_reduce(tensor, op=td.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()

    def broadcast_object(self, obj):
        """rank 0's value on every rank (e.g. the run directory name)."""
        if not self.enabled:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj) -> list:
        """Every rank's value, in rank order."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def shutdown(self) -> None:
        if self.enabled and td.is_initialized():
            td.destroy_process_group()
