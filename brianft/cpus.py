"""How many CPUs this process may really use.

`os.cpu_count()` sees the host's cores. A container or a Bacalhau job limited with `--cpus 2`
on a 64-core host still reports 64, and torch then starts 64 threads that fight over two cores'
worth of time (each waits on the others at every parallel region). The real share is the
affinity mask capped by the cgroup CPU quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup grants per period (cgroup v2 `cpu.max`, or v1
    `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None when unlimited or unknown."""
    try:
        if (v2 := root / "cpu.max").is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError, ZeroDivisionError):
        return None  # unreadable or malformed: no limit we can trust
    return None


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without them torch
    emulates it: a bf16 matrix product ran ~70x slower than float32 on an AVX2-only EPYC."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cap_torch_threads() -> int:
    """Lower torch's intra-op threads to the CPUs this process may use (never raise them: a
    caller that set fewer on purpose keeps them). Returns the thread count."""
    import torch

    limit = available_cpus()
    if torch.get_num_threads() > limit:
        torch.set_num_threads(limit)
    return torch.get_num_threads()
