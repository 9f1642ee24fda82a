"""The CPUs a process may use: affinity capped by the cgroup quota, which os.cpu_count() ignores."""

import os

import pytest
import torch

from brianft.cpus import available_cpus, cap_torch_threads, cgroup_cpu_quota, cpu_has_native_bf16


def write(root, name, text):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2: --cpus 2
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),  # unlimited
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),  # unreadable: no limit we can trust
        ({"cpu.max": "100000 0"}, None),
        ({}, None),  # no cgroup files (not Linux, or not mounted)
    ],
)
def test_cgroup_quota(tmp_path, files, quota):
    for name, text in files.items():
        write(tmp_path, name, text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_available_cpus_is_capped_by_the_quota_and_never_zero(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == affinity  # no quota
    write(tmp_path, "cpu.max", "50000 100000")  # half a CPU: still one thread
    assert available_cpus(tmp_path) == 1
    write(tmp_path, "cpu.max", f"{(affinity + 8) * 100000} 100000")  # a quota above the mask: the mask
    assert available_cpus(tmp_path) == affinity


def test_torch_threads_are_lowered_never_raised():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(available_cpus() + 3)
        assert cap_torch_threads() == available_cpus()
        torch.set_num_threads(1)
        assert cap_torch_threads() == 1  # a caller's lower setting stays
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu avx avx2 fma", False),  # AVX2-only: bf16 is emulated
        ("avx512f avx512bw avx512_bf16", True),
        ("avx512f amx_bf16 amx_tile", True),
        ("avx512f avx512bw", False),  # AVX-512 without its bf16 extension
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(cpuinfo) is native


def test_unreadable_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_native_bf16(tmp_path / "missing") is False
