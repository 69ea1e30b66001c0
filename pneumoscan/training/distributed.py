"""One process or many under torchrun (DDP): which rank this is, rank 0's objects on every rank, and every rank's
validation shards joined in dataset order."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from pneumoscan.core.cpus import usable_cores

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    local_rank: int = 0  # rank on this machine

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def from_main(self, obj: T) -> T:
        """Rank 0's object on every rank, so that only rank 0 reads the run directory (it may be one machine's disk)."""
        if self.world > 1:
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            obj = box[0]
        return obj


def processes() -> int:
    """How many processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process is torchrun's rank 0, or runs alone: the one that writes a run's outputs, and so the one
    that says its result. Read as torchrun sets it, since train() has left the process group when it returns."""
    return os.environ.get("RANK", "0") == "0"


def setup_distributed() -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = processes()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":  # share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return Dist(dist.get_rank() if world > 1 else 0, world, device, local_rank)


def gather(ctx: Dist, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array joined over every rank's shard (in rank order)."""
    if ctx.world == 1:
        return arrays
    shards: list = [None] * ctx.world
    dist.all_gather_object(shards, arrays)
    return tuple(np.concatenate(parts) for parts in zip(*shards))


def gather_rows(index: np.ndarray, logits: np.ndarray, ctx: Dist) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (index, logits) shard joined, in dataset order, so metrics see each image exactly once."""
    index, logits = gather(ctx, index, logits)
    order = np.argsort(index, kind="stable")
    return index[order], logits[order]
