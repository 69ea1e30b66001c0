"""The training engine's stub state and figures, and a DDP rank that trains on them: a module that imports torch and
the engine alone, as each rank spawned by tests/test_engine.py imports the module of its target (test_engine.py
itself imports training's whole stack: 5 s a rank against 1.5 s)."""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.synchronize
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pneumoscan.training.distributed import Dist
from pneumoscan.training.engine import Callback, State, fit


def stub_state(epochs: int = 3, batches: int = 2, lr: float = 0.1, optimizer: str = "sgd") -> State:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    optim = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = optim(model.parameters(), lr=lr)
    loader = [(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])) for _ in range(batches)]
    return State(model, model, opt, loader, Dist(), epochs, time.perf_counter(), lr=lr)


def figures(values: list[float], key: str = "val_loss"):
    """A validate() that hands out the given figures one epoch after another (a stub metric sequence)."""
    it = iter(values)
    return lambda state, logits, targets: {key: next(it)}


def rank_with_a_nan(rank: int, port: int, results: multiprocessing.Queue) -> None:
    """One of two gloo processes training the stub model under DDP, where only rank 1's second loss is NaN: a bad
    batch on one rank, which one rank's own check would refuse alone, leaving the other in the gradient all-reduce."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    torch.manual_seed(0)
    state = stub_state(epochs=2, batches=3)
    state.ctx, state.net = Dist(rank, 2), DistributedDataParallel(state.model)
    losses: list[torch.Tensor] = []

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses.append(torch.nn.functional.cross_entropy(logits, y))
        return losses[-1] * math.nan if rank == 1 and len(losses) == 2 else losses[-1]

    try:
        fit(state, [], loss_fn, figures([1.0, 1.0]))
        results.put((rank, "trained on"))
    except Exception as e:  # what each rank says, whatever it is
        results.put((rank, f"{type(e).__name__}: {e}"))
    finally:
        dist.destroy_process_group()


def rank_that_stalls(rank: int, port: int, gave_up: multiprocessing.synchronize.Event,
                     results: multiprocessing.Queue) -> None:
    """One of two gloo processes training the stub model under DDP with a 2 s timeout, where rank 1 stalls in its
    second step until rank 0 has given up waiting for it in that step's all-reduce (or 20 s)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=2))
    torch.manual_seed(0)
    state = stub_state(epochs=1, batches=3)
    state.ctx, state.net = Dist(rank, 2, timeout_s=2), DistributedDataParallel(state.model)
    steps: list[int] = []

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        steps.append(1)
        if rank == 1 and len(steps) == 2:
            gave_up.wait(timeout=20)
        return torch.nn.functional.cross_entropy(logits, y)

    try:
        fit(state, [], loss_fn, figures([1.0]))
        results.put((rank, "trained on"))
    except Exception as e:  # what each rank says, whatever it is
        results.put((rank, f"{type(e).__name__}: {e}"))
        gave_up.set()


def rank_that_stops_alone(rank: int, port: int, results: multiprocessing.Queue) -> None:
    """One of two gloo processes training the stub model under DDP (3 epochs of 3 steps, a 5 s timeout), where a
    callback on rank 1 alone leaves the first epoch after its first step and ends training after the second epoch:
    it puts the steps of each epoch's row, or what it raised."""

    class OnRank1(Callback):
        def before_step(self, state: State) -> None:
            state.end_epoch = state.end_epoch or (rank == 1 and state.epoch == 0 and state.step == 1)

        def on_validation_end(self, state: State) -> None:
            state.stop = state.stop or (rank == 1 and state.epoch == 1)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=5))
    torch.manual_seed(0)
    state = stub_state(epochs=3, batches=3)
    state.ctx, state.net = Dist(rank, 2, timeout_s=5), DistributedDataParallel(state.model)
    try:
        fit(state, [OnRank1()], torch.nn.functional.cross_entropy, figures([1.0, 1.0, 1.0]))
        results.put((rank, [row["step"] for row in state.history]))
    except Exception as e:  # what each rank says, whatever it is
        results.put((rank, f"{type(e).__name__}: {str(e)[:200]}"))
    finally:
        dist.destroy_process_group()
