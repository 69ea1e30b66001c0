"""One process or many under torchrun (DDP): which rank this is, rank 0's objects and BatchNorm statistics on every
rank, a refusal when the ranks read different data, and every rank's validation shards joined in dataset order."""

from __future__ import annotations

import atexit
import os
import socket
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

    def agree(self, key: str, said: str, what: str, hint: str) -> None:
        """Refuse, on every rank at once, a run whose ranks hold different ``key`` (rank 0's is the reference):
        ``said`` is how this rank's shows in the one-line reason, ``what`` what they disagree on. For what each
        machine reads for itself (its copy of the data): ranks that read other films index other films by the same
        row numbers, so a rank's share of the validation scores would be paired with rank 0's labels, silently."""
        if self.world == 1:
            return
        seen: list = [None] * self.world
        dist.all_gather_object(seen, (key, said, socket.gethostname()))
        if odd := next((rank for rank, (other, _, _) in enumerate(seen) if other != seen[0][0]), None):
            raise ValueError(f"the processes disagree on {what}: process {odd} (on {seen[odd][2]}) {seen[odd][1]}, "
                             f"process 0 (on {seen[0][2]}) {seen[0][1]}; {hint}")

    def main_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) in this rank's ``model``, before each rank scores its share
        of the validation films: DDP copies rank 0's at the start of each training step, then that step's batch moves
        every rank's own, so each rank's share would be scored by a model a little unlike rank 0's, the one saved
        (logits ~1e-3 apart), and the best epoch chosen on a mixture of models."""
        if self.world > 1:
            for buf in model.buffers():
                whole = buf.contiguous()
                dist.broadcast(whole, src=0)
                if whole.data_ptr() != buf.data_ptr():
                    buf.copy_(whole)


def processes() -> int:
    """How many processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process is torchrun's rank 0, or runs alone: the one that writes a run's outputs, and so the one
    that says its result. Read as torchrun sets it, which needs no process group."""
    return os.environ.get("RANK", "0") == "0"


def setup_distributed() -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU), once per process:
    later runs in the process (``cv``'s folds) use the same group, which is left at exit. A group left and joined
    again finds the last one's addresses still in torchrun's store: a process that joined before another had left
    its earlier work (rank 0 scoring a fold) hung, or failed on a closed port."""
    world = processes()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
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
