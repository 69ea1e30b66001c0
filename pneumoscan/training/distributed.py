"""One process or many under torchrun (DDP): which rank this is, rank 0's objects and BatchNorm statistics on every
rank, a refusal when the ranks read different data, and every rank's shards joined in dataset order."""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from pneumoscan.core.cpus import usable_cores

T = TypeVar("T")
TIMEOUT_ENV = "PNEUMOSCAN_DIST_TIMEOUT"
# Seconds a process waits for the others (torch's own default: 30 min). One process alone builds the image cache
# (each machine's first), scores the training films with the teachers, writes the bundle (ONNX export, the
# test-time views of every validation film) and scores each cv fold, while the others wait: each grows with the
# films, and on a large dataset can outlast 30 min, after which the waiting processes fail and the run is lost. A
# process that fails makes torchrun stop the others at once, so only one that hangs without failing keeps them
# waiting this long.
DEFAULT_TIMEOUT_S = 3 * 3600
# why a process waits, in its timeout's line (Dist.waiting)
WORK_ALONE = ("one process alone builds the image cache, scores the teachers, writes the bundle or scores a cv fold, "
              "which can take longer on a large dataset: set {setting} (seconds) above how long that takes")
AT_EVERY_STEP = ("the processes meet at every training step (the gradients' average), so another one stopped or "
                 "stalled there (its own log says why) or runs far slower (a busy or smaller machine); if it is only "
                 "slower, set {setting} (seconds) above its longest stall")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    local_rank: int = 0  # rank on this machine
    timeout_s: float = DEFAULT_TIMEOUT_S  # how long a collective waits for the other processes (group_timeout)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def waiting(self, why: str = "") -> Iterator[None]:
        """Gloo's timeout of a collective (``Timed out waiting 10800000ms for recv operation``) as one line that
        names the setting to raise, and ``why`` a process waits there (default: for one doing work alone;
        :data:`AT_EVERY_STEP`). NCCL's watchdog ends the waiting process itself, with its own line (``Watchdog
        caught collective operation timeout``)."""
        try:
            yield
        except RuntimeError as e:
            if "timed out" not in str(e).lower():
                raise
            raise TimeoutError(f"process {self.rank} waited {self.timeout_s:g} s for the others and gave up; "
                               + (why or WORK_ALONE).format(setting=TIMEOUT_ENV)) from e

    def barrier(self) -> None:
        if self.world > 1:
            with self.waiting():
                dist.barrier()

    def from_main(self, obj: T) -> T:
        """Rank 0's object on every rank, so that only rank 0 reads the run directory (it may be one machine's disk)."""
        if self.world > 1:
            box = [obj]
            with self.waiting():
                dist.broadcast_object_list(box, src=0)
            obj = box[0]
        return obj

    def any(self, flag: bool, why: str = "") -> bool:
        """Whether ``flag`` is true on any rank, on every rank: for what every rank must do together (refuse a step,
        leave an epoch, end training), which one rank doing alone leaves the others waiting in a collective it never
        joins. ``why``: why the ranks meet there, as :meth:`waiting` says it."""
        if self.world == 1:
            return flag
        seen = torch.tensor([float(flag)], device=self.device)
        with self.waiting(why):
            dist.all_reduce(seen, op=dist.ReduceOp.MAX)
        return bool(seen.item())

    def gathered(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        seen: list = [None] * self.world
        with self.waiting():
            dist.all_gather_object(seen, obj)
        return seen

    def agree(self, key: str, said: str, what: str, hint: str) -> None:
        """Refuse, on every rank at once, a run whose ranks hold different ``key`` (rank 0's is the reference):
        ``said`` is how this rank's shows in the one-line reason, ``what`` what they disagree on. For what each
        machine reads for itself (its copy of the data): ranks that read other films index other films by the same
        row numbers, so a rank's share of the validation scores would be paired with rank 0's labels, silently."""
        if self.world == 1:
            return
        seen = self.gathered((key, said, socket.gethostname()))
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
                with self.waiting():
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


def group_timeout() -> float:
    """Seconds a collective waits for the other processes: :data:`TIMEOUT_ENV`, else :data:`DEFAULT_TIMEOUT_S`. An
    environment variable, not a training setting: it changes no result, so a run resumed or a cv fold trained with
    another is the same recipe; and the process group, made once per process, serves every fold of a cv."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: give the seconds a process waits for the others, e.g. "
                         f"{DEFAULT_TIMEOUT_S} (the default)")
    return seconds


def check_gpus(gpus: int, here: int) -> None:
    """Refuse more processes on this machine (``here``: torchrun's LOCAL_WORLD_SIZE) than the GPUs it shows them
    (``gpus``): process *i* takes ``cuda:i``, and ``torch.cuda.set_device`` of one past the last fails with a CUDA
    traceback. Every process refuses, before any joins the group."""
    if here > gpus:
        raise ValueError(f"torchrun started {here} processes on this machine, which has {gpus} visible GPU(s): one "
                         f"process a GPU, so give --nproc_per_node {gpus} or fewer (CUDA_VISIBLE_DEVICES= trains on "
                         "the CPU)")


def setup_distributed() -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU), once per process:
    later runs in the process (``cv``'s folds) use the same group, which is left at exit. A group left and joined
    again finds the last one's addresses still in torchrun's store: a process that joined before another had left
    its earlier work (rank 0 scoring a fold) hung, or failed on a closed port. Its collectives wait
    :func:`group_timeout` for the other processes."""
    world = processes()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    here = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        check_gpus(torch.cuda.device_count(), here)
    timeout = group_timeout() if world > 1 else DEFAULT_TIMEOUT_S
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
        atexit.register(dist.destroy_process_group)
        if device.type == "cpu":  # share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, usable_cores() // here))
    return Dist(dist.get_rank() if world > 1 else 0, world, device, local_rank, timeout)


def shard(ctx: Dist, n: int) -> np.ndarray:
    """This rank's rows of ``n``: every ``world``-th from its rank, so the ranks' shares differ by one row at most
    (no padding or duplicates) and :func:`gather_shards` puts them back in order."""
    return np.arange(n)[ctx.rank :: ctx.world]


def gather(ctx: Dist, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array joined over every rank's shard (in rank order), on every rank."""
    if ctx.world == 1:
        return arrays
    shards: list = [None] * ctx.world
    with ctx.waiting():
        dist.all_gather_object(shards, arrays)
    return _joined(shards)


def gather_shards(ctx: Dist, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array joined over every rank's rows of it (:func:`shard`), in the order of the whole, on every rank: for
    what every rank needs (the validation figures, on which every rank decides when to stop)."""
    return _in_films_order(ctx.world, gather(ctx, *arrays))


def gather_shards_to_main(ctx: Dist, *arrays: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """:func:`gather_shards` on rank 0 alone, None on the others: for what rank 0 alone uses (the warm start's
    features, which it fits the head on), which the others would only receive and hold."""
    if ctx.world == 1:
        return arrays
    shards: list | None = [None] * ctx.world if ctx.main else None
    with ctx.waiting():
        dist.gather_object(arrays, shards, dst=0)
    return _in_films_order(ctx.world, _joined(shards)) if shards is not None else None


def _joined(shards: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Each array joined over the ranks' ``shards`` (in rank order). A rank whose share is empty (fewer films than
    processes) adds no rows, whatever its array's shape: with no film it cannot know the scores' or features' width
    (``predict_logits`` gives (0, 0)), so the others' width and dtype hold; all empty, rank 0's array is the whole."""
    return tuple(np.concatenate([part for part in parts if len(part)] or parts[:1]) for parts in zip(*shards))


def _in_films_order(world: int, joined: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """The arrays joined in rank order (:func:`_joined`) put back in the order of the whole, which :func:`shard`
    dealt out to ``world`` ranks."""
    n = len(joined[0])
    order = np.argsort(np.concatenate([shard(Dist(rank, world), n) for rank in range(world)]), kind="stable")
    return tuple(a[order] for a in joined)
