"""A rank of tests/test_distributed.py's process-group timeout test: a module that imports the distributed helpers
alone, as each rank spawned by the test imports the module of its target (test_distributed.py itself imports
training's whole stack: seconds a rank)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os


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
