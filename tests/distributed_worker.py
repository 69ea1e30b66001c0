"""What each of two ranks runs under torchrun in tests/test_distributed.py (``python -u -m tests.distributed_worker
DATA OTHER_COPY OUT TRAIN-ARGUMENTS...``): train's command line, the same command resuming its run, then the
library's runs that could leave the ranks disagreeing. One launch for all, by torchrun's own code (its arguments,
rendezvous and agent, as ``torchrun --standalone --nproc_per_node 2``), of ranks forked from the launcher once it has
imported what a rank's runs use: a rank started as an interpreter of its own spent about 6 s of CPU importing
training's stack, the launcher 2 s importing torch."""

from __future__ import annotations

import atexit
import faulthandler
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch.distributed as dist

from pneumoscan import cli
from pneumoscan.training.config import TrainConfig, load_config
from pneumoscan.training.distributed import Dist, gather_shards, setup_distributed, shard
from pneumoscan.training.engine import Callback, State
from pneumoscan.training.train import train, warm_start
from tests.distributed_stubs import CountingProbe, probe_films

# what rank 0 prints once the first run is done and kept, before the resume: the test splits the launch's log there
FIRST_RUN_KEPT = "== the first run is done and kept =="
# how long a rank's exit handlers may take (leaving the group takes milliseconds) before it dumps its stacks and ends
EXIT_HANDLERS_S = 60
# cnn5 has BatchNorm; class weights off, so the test recomputes the validation loss without the training split
RECIPE = dict(model="cnn5", pretrained=False, image_size=32, batch_size=8, epochs=1, class_weights=False)


class DriftOnRank1(Callback):
    """Rank 1's BatchNorm statistics moved further than its own last batch moves them: validation must not see them."""

    def before_validation(self, state: State) -> None:
        if state.ctx.rank == 1:
            for name, buf in state.model.named_buffers():
                if name.endswith("running_var"):
                    buf.mul_(0.25)


def probe_warm_start(ctx: Dist) -> dict:
    """The warm start of a :class:`CountingProbe` on 61 training and 41 validation films: the penalty chosen, the
    head fitted and how many films' features this process computed."""
    probe = CountingProbe()
    l2 = warm_start(probe, (probe_films(61, 0), probe_films(41, 1)), None, 16, ctx)
    return {"l2": l2, "weight": probe.fc.weight.tolist(), "bias": probe.fc.bias.tolist(), "films": probe.films}


def keep_first_run(ctx: Dist, run: Path, out: Path) -> dict[str, list[int]]:
    """Once every rank is done with the first run, rank 0 copies it to OUT/first, says :data:`FIRST_RUN_KEPT` after
    all the ranks' lines of that run, and gives each cache file's inode and mtime then, for the test to check the
    run as it was and the cache's reuse by the resume."""
    sys.stdout.flush()
    sys.stderr.flush()
    ctx.barrier()
    cached = {}
    if ctx.main:
        shutil.copytree(run, out / "first")
        cache = Path(os.environ["PNEUMOSCAN_CACHE"])
        cached = {p.name: [p.stat().st_ino, p.stat().st_mtime_ns] for p in cache.iterdir()}
        print(FIRST_RUN_KEPT, flush=True)
    ctx.barrier()
    return cached


def main(data: Path, other_copy: Path, out: Path, train_args: list[str]) -> None:
    """One rank's part: ``pneumoscan train ...`` as TRAIN-ARGUMENTS give it, then resumed for an epoch more by the
    same command; a run one process made, resumed under two; a run whose rank 1 moves its BatchNorm statistics; as
    ``cv`` goes on to its next fold while rank 0 still writes the last, a run where rank 1 reads a copy of the data
    with a film it cannot read; then a warm start of a probe together."""
    rank = int(os.environ["RANK"])
    said: dict = {"first_status": cli.main(train_args)}
    said["cached"] = keep_first_run(setup_distributed(), Path(cli.build_parser().parse_args(train_args).out), out)
    said["resume_status"] = cli.main([*train_args, "--epochs", "2", "--resume"])
    try:  # its own settings, one epoch more than it trained
        config = out / "single" / "config.yaml"
        train(data, load_config(config, epochs=load_config(config).epochs + 1), config.parent, resume=True)
    except ValueError as e:
        said["resume_refused"] = str(e)
    # 2 films a rank: an epoch of nine steps, which ranks the validation films (global batch 16 took two, and its
    # AUC of 0.5 was refused as no better than chance)
    bundle = train(data, TrainConfig(**{**RECIPE, "batch_size": 2}), out / "drift", callbacks=[DriftOnRank1()])
    said["bundle_there_on_return"] = (bundle / "bundle.json").is_file()
    if rank == 0:
        time.sleep(1)
    try:
        train(other_copy if rank == 1 else data, TrainConfig(**RECIPE), out / "refused")
    except ValueError as e:
        said["refused"] = str(e)
    ctx = setup_distributed()  # the group every run used
    said["warm_start"] = probe_warm_start(ctx)
    said["joined"] = gather_shards(ctx, shard(ctx, 7) * 10)[0].tolist()
    (out / f"rank{rank}.json").write_text(json.dumps(said))


def run_exit_handlers() -> None:
    """What a rank's own interpreter runs at its exit, which a forked rank, ended by os._exit, skips: the atexit
    handlers, setup_distributed's leaving of the group among them. A handler that raises (printed and ignored at an
    interpreter's exit, status 0) fails the rank; one that hangs dumps every thread's stack and ends the rank with
    status 1 after :data:`EXIT_HANDLERS_S`; and the group must be left."""
    failed: list[BaseException | None] = []
    default_hook = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:  # where atexit reports a handler's exception
        default_hook(unraisable)
        failed.append(unraisable.exc_value)

    sys.unraisablehook = hook
    faulthandler.dump_traceback_later(EXIT_HANDLERS_S, exit=True)
    try:
        atexit._run_exitfuncs()
    finally:
        faulthandler.cancel_dump_traceback_later()
        sys.unraisablehook = default_hook
    if failed:
        raise RuntimeError("an exit handler raised (its traceback above)") from failed[0]
    assert not dist.is_initialized(), "the process group was not left at exit"


def rank(data: str, other_copy: str, out: str, *train_args: str) -> None:
    """A rank, forked by torchrun's agent with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...): it ends
    by os._exit, without the interpreter's last collections, once it has run the exit handlers as an interpreter
    ends."""
    main(Path(data), Path(other_copy), Path(out), list(train_args))
    run_exit_handlers()


def launch(rank_args: list[str]) -> None:
    """``torchrun --standalone --nproc_per_node 2 --start-method fork`` of :func:`rank`: torchrun's main, its
    script's command replaced by this module's function (torchrun forks only a function's ranks)."""
    import torch.distributed.run as torchrun

    # what a rank's runs import where they need it (training's pipelines, its figures and metrics, the ONNX export,
    # the warm start): once here, not in each rank
    import matplotlib.figure  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.utils.class_weight  # noqa: F401
    import torch.onnx  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401

    script_config = torchrun.config_from_args
    torchrun.config_from_args = lambda args: (script_config(args)[0], rank, rank_args)
    torchrun.main(["--standalone", "--nproc_per_node", "2", "--start-method", "fork", "-m", __name__])


if __name__ == "__main__":
    launch(sys.argv[1:])
