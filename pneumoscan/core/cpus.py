"""How many cores this process may use (affinity, cpuset, a container's CPU quota), and so how many threads a model
run takes and how large each pool of workers is: worked out here, once, without loading torch."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP = Path("/sys/fs/cgroup")  # a container's own cgroup (its namespace's root), where its CPU quota is set


def usable_cores() -> int:
    """The cores this process may use, which every pool of workers and every model run's threads
    (:func:`model_threads`) are sized by: ``taskset`` or a container's cpuset narrows them, and so does a CPU quota
    (a Kubernetes CPU limit, ``docker --cpus``: :func:`cpu_quota`, rounded up), while ``os.cpu_count`` counts the
    machine's (64 decoding processes in a 2-core container)."""
    cores = len(_allowed_cpus())
    quota = cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def model_threads() -> int:
    """The intra-op threads each model run uses, torch and ONNX Runtime alike (every ONNX Runtime session is sized
    by it), never more than :func:`usable_cores`: threads beyond a CPU quota or a cpuset only wait for their turn,
    and throttle the rest. Below that cap: torch's own count once it is loaded (``torch.set_num_threads``
    included), else the count torch's MKL build starts with, worked out without loading torch (about 0.5 GB):
    MKL_NUM_THREADS, else OMP_NUM_THREADS, at most one a physical core of the machine; without either, one a
    physical core this process may run on. A count the user gave is honoured up to that cap, not beyond it."""
    cap = usable_cores()
    if (torch := sys.modules.get("torch")) is not None:
        return min(torch.get_num_threads(), cap)
    for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        # a count, or OpenMP's list of them for nested levels ("4,2": the first); anything else is passed over
        if (found := re.fullmatch(r"\s*\+?(\d+)\s*(,.*)?", os.environ.get(name, ""))) and int(found[1]) > 0:
            return min(int(found[1]), _physical_cores(range(os.cpu_count() or 1)), cap)
    return min(_physical_cores(_allowed_cpus()), cap)


def _allowed_cpus() -> Collection[int]:
    """The CPUs this process may run on (``taskset``, a cpuset); every CPU where the platform cannot say (macOS
    has no ``sched_getaffinity``)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)


def cap_torch_threads() -> None:
    """Lower a loaded torch's intra-op threads to :func:`usable_cores` (logged), where predict, evaluate and serve
    load a model: torch counts the machine's cores, not a container's CPU quota, so in a pod limited to 2 CPUs on a
    32-core node each model call ran 16 threads. A lower count (``torch.set_num_threads``, OMP_NUM_THREADS) stays."""
    torch = sys.modules.get("torch")
    if torch is not None and (threads := torch.get_num_threads()) > (cap := usable_cores()):
        log.info("torch's %d intra-op threads capped at the %d cores this process may use (affinity, CPU quota)",
                 threads, cap)
        torch.set_num_threads(cap)


def _physical_cores(cpus: Iterable[int]) -> int:
    """Physical cores among ``cpus`` (hyper-threads of one core count once)."""
    cpus = list(cpus)
    try:
        topology = [Path(f"/sys/devices/system/cpu/cpu{cpu}/topology") for cpu in cpus]
        return len({((t / "physical_package_id").read_text(), (t / "core_id").read_text()) for t in topology})
    except OSError:  # no sysfs topology (a restricted container): every CPU counts
        return len(cpus)


def cpu_quota(root: Path | None = None, membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs' worth of time this process's cgroup may use: cgroup v2's cpu.max, or v1's cpu.cfs_quota_us over
    cpu.cfs_period_us, in the cgroup ``membership`` names under ``root`` (:data:`CGROUP`; a systemd unit's
    ``CPUQuota=`` on the host), else at ``root`` itself (a container's namespace shows its own cgroup there). None
    when no quota is set or none can be read."""
    root = root or CGROUP
    own = {"v2": "", "v1": ""}  # this process's cgroup path in each hierarchy, from /proc/self/cgroup
    try:
        for line in membership.read_text().splitlines():
            number, controllers, path = line.split(":", 2)
            if number == "0" and not controllers:
                own["v2"] = path.lstrip("/")
            elif "cpu" in controllers.split(","):
                own["v1"] = path.lstrip("/")
    except (OSError, ValueError):
        pass
    for v2 in dict.fromkeys([root / own["v2"] / "cpu.max", root / "cpu.max"]):
        if v2.exists():
            return _quota(lambda: v2.read_text().split()[:2])
    for v1 in dict.fromkeys([root / "cpu" / own["v1"], root / "cpu"]):
        if (v1 / "cpu.cfs_quota_us").exists():
            names = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            return _quota(lambda: [(v1 / name).read_text().strip() for name in names])
    return None


def _quota(read: Callable[[], list[str]]) -> float | None:
    """quota / period from ``read()``'s two texts; None for no quota ("max", -1) or values not as the kernel
    writes them."""
    try:
        quota, period = read()
        if quota in ("max", "-1") or float(period) <= 0:
            return None
        return float(quota) / float(period)
    except (OSError, ValueError):
        return None
