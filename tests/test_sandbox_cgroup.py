"""The cgroup layouts, on fake hierarchies (plain folders that behave as cgroupfs does for what
the sandbox reads and writes), so both v1 (this machine) and v2 are checked; the kernel's side
of v1 is tested for real in test_sandbox_run_bounds.py."""

import os

import pytest

from verl_avsd.sandbox import _sandbox_init, cgroup
from verl_avsd.sandbox.result import MIB, Limits

V2_FILES = {
    "cgroup.procs": "",
    "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\n",
    "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
}
V1_FILES = {
    "cgroup.procs": "",
    "cpuacct.usage": "1250000000\n",
    "memory.oom_control": "oom_kill_disable 0\noom_kill 2\n",
}


@pytest.fixture
def fake_cgroupfs(monkeypatch):
    """mkdir makes a cgroup's files appear, as it does in cgroupfs."""
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777):
        real_mkdir(path, mode)
        for name, text in {**V2_FILES, **V1_FILES}.items():
            with open(os.path.join(path, name), "w") as f:
                f.write(text)

    monkeypatch.setattr(cgroup.os, "mkdir", mkdir)


def _read(folder, name):
    with open(os.path.join(folder, name)) as f:
        return f.read()


def test_v2_layout_limits_counts_and_cleans_up(tmp_path, fake_cgroupfs):
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (root / "cgroup.subtree_control").write_text("")
    support = cgroup._v2_support({"cgroup2": str(root)}, {})
    base = str(root / cgroup.BASE_NAME)
    assert support == cgroup.CgroupSupport("v2", {"unified": base})
    assert _read(root, "cgroup.subtree_control") == "+memory +pids"  # enabled for our folder...
    assert _read(base, "cgroup.subtree_control") == "+memory +pids"  # ...and for each run under it
    run = cgroup.RunCgroup.create(support, Limits(memory_mb=300, max_processes=7))
    folder = run.dirs["unified"]
    assert os.path.dirname(folder) == base and os.path.basename(folder).startswith(f"run-{os.getpid()}-")
    assert (_read(folder, "memory.max"), _read(folder, "memory.swap.max"), _read(folder, "pids.max")) == (
        str(300 * MIB), "0", "7")  # fmt: skip
    assert run.cpu_format == "usage_usec" and run.cpu_seconds() == 2.5 and run.oom_kills() == 1
    assert len(run.procs_fds) == 1 and run.fds == [*run.procs_fds, run.cpu_fd]
    run.close()
    assert run.fds == [-1]


def test_v2_without_the_memory_controller_says_so(tmp_path):
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("hugetlb\n")  # a hybrid machine like this one
    with pytest.raises(cgroup.CgroupsUnavailable, match="lacks the memory, pids controller"):
        cgroup._v2_support({"cgroup2": str(root)}, {})


def test_v1_layout_nests_under_our_own_cgroup(tmp_path, fake_cgroupfs):
    mounts, membership = {}, {"memory": "/jobs/42", "pids": "/", "cpuacct": "/"}
    for controller in cgroup.V1_CONTROLLERS:
        (tmp_path / controller / "jobs" / "42").mkdir(parents=True)
        mounts[controller] = (str(tmp_path / controller), "/")
    support = cgroup._v1_support(mounts, membership)
    assert support.bases["memory"] == str(tmp_path / "memory" / "jobs" / "42" / cgroup.BASE_NAME)
    assert support.bases["pids"] == str(tmp_path / "pids" / cgroup.BASE_NAME)
    run = cgroup.RunCgroup.create(support, Limits(memory_mb=64, max_processes=5))
    assert _read(run.dirs["memory"], "memory.limit_in_bytes") == str(64 * MIB)
    assert _read(run.dirs["memory"], "memory.memsw.limit_in_bytes") == str(64 * MIB)  # no swapping past it
    assert _read(run.dirs["pids"], "pids.max") == "5"
    assert run.cpu_format == "ns" and run.cpu_seconds() == 1.25 and run.oom_kills() == 2
    assert len(run.procs_fds) == 3  # the program joins each hierarchy
    run.close()


def test_turned_off_cgroups_say_why(monkeypatch):
    assert cgroup.find_cgroups(enabled=False) == (None, f"turned off (cgroups=False or {cgroup.CGROUPS_ENV}=0)")
    monkeypatch.setenv(cgroup.CGROUPS_ENV, "0")
    assert cgroup.find_cgroups()[0] is None


@pytest.mark.parametrize("cpu_format, text, seconds", [("ns", "1500000000\n", 1.5), ("usage_usec", V2_FILES["cpu.stat"], 2.5)])
def test_the_init_reads_the_same_cpu_counters(tmp_path, cpu_format, text, seconds):
    path = tmp_path / "counter"
    path.write_text(text)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _sandbox_init.CgroupMeter(fd, cpu_format).sample() == (seconds, 0)
        assert cgroup.read_cpu_seconds(fd, cpu_format) == seconds
    finally:
        os.close(fd)
