"""Two gloo processes started by multiprocessing (not torchrun: no third interpreter), and a rank of
tests/test_distributed.py's process-group timeout test: a module that imports the distributed helpers alone, as each
rank spawned by a test imports the module of its target (test_distributed.py itself imports training's whole stack:
seconds a rank)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import socket
from collections.abc import Callable


def rank_waiting_for_rank_0(rank: int, port: int, start: multiprocessing.synchronize.Barrier,
                            gave_up: multiprocessing.synchronize.Event, results: multiprocessing.Queue) -> None:
    """One of two gloo processes under a 2 s ``PNEUMOSCAN_DIST_TIMEOUT``, as torchrun's environment describes them:
    rank 0 works alone (as it scores the teacher's targets) until rank 1 has given up waiting for them, or 20 s."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PNEUMOSCAN_DIST_TIMEOUT="2",
                      CUDA_VISIBLE_DEVICES="")  # gloo, as on a machine without GPUs
    from pneumoscan.training.distributed import setup_distributed

    start.wait(timeout=60)  # both interpreters started: the timeout covers joining the group too
    ctx = setup_distributed()
    try:
        targets = ctx.from_main(gave_up.wait(timeout=20) and "targets" if ctx.main else None)
        results.put((rank, f"took {targets}"))
    except Exception as e:  # what each rank says, whatever it is
        results.put((rank, f"{type(e).__name__}: {e}"))
        gave_up.set()


def two_gloo_ranks(target: Callable[..., None], *shared: Callable[[multiprocessing.context.BaseContext], object]
                   ) -> dict[int, str]:
    """What each of two spawned processes running ``target(rank, port, *objects, results)`` put in ``results`` (its
    rank and a line), where ``objects`` are made by ``shared`` from the processes' context (a barrier, an event);
    ``port`` is a free one of this machine for rank 0's store."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    objects, results = [make(context) for make in shared], context.Queue()
    ranks = [context.Process(target=target, args=(rank, port, *objects, results)) for rank in range(2)]
    for p in ranks:
        p.start()
    try:
        return dict(results.get(timeout=120) for _ in ranks)
    finally:
        for p in ranks:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
