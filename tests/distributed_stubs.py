"""Two gloo processes started by multiprocessing (not torchrun: no third interpreter), a rank of
tests/test_distributed.py's process-group timeout test, one of its ranks with fewer films than ranks, and the warm
start's probe model: a module that imports the distributed helpers and the warm start alone, as each rank spawned
by a test imports the module of its target (the test modules themselves import training's whole stack: seconds a
rank)."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import signal
import socket
import time
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset, TensorDataset

from pneumoscan.training.distributed import Dist, gather_shards, gather_shards_to_main, setup_distributed, shard
from pneumoscan.training.warm_start import warm_start_head


def rank_waiting_for_rank_0(rank: int, port: int, gave_up: multiprocessing.synchronize.Event,
                            results: multiprocessing.Queue) -> None:
    """One of two gloo processes under a 2 s ``PNEUMOSCAN_DIST_TIMEOUT``, as torchrun's environment describes them:
    rank 0 works alone (as it scores the teacher's targets) until rank 1 has given up waiting for them, or 20 s."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PNEUMOSCAN_DIST_TIMEOUT="2",
                      CUDA_VISIBLE_DEVICES="")  # gloo, as on a machine without GPUs
    ctx = setup_distributed()
    try:
        targets = ctx.from_main(gave_up.wait(timeout=20) and "targets" if ctx.main else None)
        results.put((rank, f"took {targets}"))
    except Exception as e:  # what each rank says, whatever it is
        results.put((rank, f"{type(e).__name__}: {e}"))
        gave_up.set()


class CountingProbe(torch.nn.Module):
    """The timm surface the warm start uses, on films whose pixels (N, D, 1, 1) are their features; it counts the
    films it computes the features of. Its head starts the same in every process."""

    def __init__(self, dims: int = 8) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(dims, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.linspace(-0.5, 0.5, 2 * dims).reshape(2, dims))
            self.fc.bias.zero_()
        self.films = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.films += len(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> torch.nn.Module:
        return self.fc


def probe_films(n: int, seed: int) -> TensorDataset:
    """``n`` films whose first feature tells the label, with noise: the same in every process."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] + torch.randn(n, generator=gen) > 0).long()
    return TensorDataset(x[:, :, None, None], y)


def rank_with_fewer_films_than_ranks(rank: int, port: int, results: multiprocessing.Queue) -> None:
    """One of two gloo processes sharing out fewer films than processes, as 8 GPUs do a validation set of 5: rank 1's
    share of one film is empty. Both join a share of scores (rank 1's without films as ``predict_logits`` gives it,
    no column to take the scores' width from), then warm-start a :class:`CountingProbe` on 5 training films and 1
    validation film; says what each got."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    ctx, said = Dist(rank, 2), {}
    try:
        rows = shard(ctx, 1)
        scores = (np.array([[0.25, 0.75]], np.float32) if len(rows) else np.zeros((0, 0), np.float32), rows * 10)
        said["joined"] = [(a.tolist(), str(a.dtype)) for a in gather_shards(ctx, *scores)]
        on_main = gather_shards_to_main(ctx, *scores)
        said["on_main"] = None if on_main is None else [(a.tolist(), str(a.dtype)) for a in on_main]
        probe = CountingProbe()
        # training, validation: a film the head scores better than the class frequencies, or the warm start refuses
        films = (probe_films(5, 0), probe_films(1, 3))
        loaders = [DataLoader(Subset(part, shard(ctx, len(part))), 16) for part in films]
        said["l2"] = warm_start_head(probe, *loaders, None, ctx.device, ctx)
        said.update(weight=probe.fc.weight.tolist(), bias=probe.fc.bias.tolist(), films=probe.films)
    except Exception as e:  # what each rank says, whatever it is
        said["error"] = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()
    results.put((rank, said))


def ranks_given_other_settings(rank: int, port: int, results: multiprocessing.Queue) -> None:
    """One of two gloo processes whose commands differ in their learning rate and their data loader's workers (a
    setting of each machine's own), checking that they were given one recipe; says what it got."""
    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.resume import check_same_recipe, made_by

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    ctx = Dist(rank, 2)
    try:
        for lr in (0.001, 0.001 * (1 + 9 * rank)):
            check_same_recipe(made_by(TrainConfig(lr=lr, workers=rank), ctx, "sha256:data", []), ctx)
            said = "agreed"
    except ValueError as e:
        said = str(e)
    finally:
        dist.destroy_process_group()
    results.put((rank, said))


class _Said:
    """The results queue as a scenario's target sees it: what it puts is tagged with the scenario's number."""

    def __init__(self, results: multiprocessing.Queue, scenario: int) -> None:
        self.results, self.scenario = results, scenario

    def put(self, item: object) -> None:
        self.results.put((self.scenario, item))


def _rank(rank: int, runs: list[tuple[Callable[..., None], int, list[object]]], results: multiprocessing.Queue,
          meet: multiprocessing.synchronize.Barrier) -> None:
    """One of :func:`two_gloo_ranks`' processes: each scenario's target, one after another, the ranks meeting at
    ``meet`` before each: a scenario's timeout (2 s for some) covers its own waits, not a rank still leaving the
    last scenario's group, or held up by a loaded machine, while the other joins the next one."""
    for scenario, (target, port, objects) in enumerate(runs):
        meet.wait(timeout=60)
        target(rank, port, *objects, _Said(results, scenario))


def _ranks(runs: list[tuple[Callable[..., None], int, list[object]]], results: multiprocessing.Queue,
           meet: multiprocessing.synchronize.Barrier) -> None:
    """:func:`two_gloo_ranks`' one spawned interpreter, which has imported the targets' modules (torch) and run
    nothing of torch's yet: it forks rank 1, which the kernel kills when this process (rank 0) ends, and goes on as
    rank 0. One interpreter's start and torch's import, not two (each 1-2 s of CPU). Rank 0 waits for rank 1 (60 s
    at most) before it ends: its end kills rank 1, maybe before what it said last has left its queue's feeder."""
    # A process's first optimiser imports torch's compiler stack (torch._dynamo: 1.5-2 s of CPU), which the scenarios'
    # training and warm starts meet: one made here, before the fork, imports it once for both ranks. Making it runs
    # no parallel region of torch's (a one-element tensor), so the fork still finds none of its threads.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: ends with rank 0, as the test kills it
            if os.getppid() == parent:  # else rank 0 ended before the line above, and nothing would end this one
                _rank(1, runs, results, meet)
        finally:
            results.close()
            results.join_thread()  # what it put is in the pipe
            os._exit(0)
    try:
        _rank(0, runs, results, meet)
    finally:
        deadline = time.monotonic() + 60
        while os.waitpid(child, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.02)


def two_gloo_ranks(*scenarios: tuple[Callable[..., None], ...]) -> list[dict[int, object]]:
    """What each of two processes (one spawned, which forks the other) put in ``results`` (its rank and a line, or
    what it got) in each scenario ``(target, *shared)``: the processes run ``target(rank, port, *objects, results)``
    for one scenario after another, meeting before each, where ``objects`` are made by ``shared`` from the processes'
    context (an event) and ``port`` is a free one of this machine for rank 0's store, a scenario's own. Starting the
    interpreter (it imports torch) is most of a scenario's time: a module's scenarios share it, each joining and
    leaving a group of its own; one that leaves its group broken (a timeout) goes last."""
    sockets = [socket.socket() for _ in scenarios]  # all bound at once: a port each
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    context = multiprocessing.get_context("spawn")
    runs = [(target, port, [make(context) for make in shared]) for (target, *shared), port in zip(scenarios, ports)]
    results = context.Queue()
    meet = context.Barrier(2)  # held here until the ranks end: gone in this process, it is gone for them
    ranks = [context.Process(target=_ranks, args=(runs, results, meet))]  # rank 0, which forks rank 1
    for p in ranks:
        p.start()
    said: list[dict[int, object]] = [{} for _ in scenarios]
    try:
        for _ in range(2 * len(scenarios)):
            try:
                scenario, (rank, what) = results.get(timeout=120)
            except queue.Empty:
                raise AssertionError(f"a rank said nothing for 120 s (a scenario hangs); each scenario's ranks said "
                                     f"{list(zip((t.__name__ for t, *_ in scenarios), said))}") from None
            said[scenario][rank] = what
        return said
    finally:  # each has said what it got (or hangs): its exit, torch's teardown, took 2-4 s of each test and proves
        for p in ranks:  # nothing here
            p.kill()
            p.join(timeout=30)
