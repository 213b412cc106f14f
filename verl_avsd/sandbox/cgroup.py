"""One control group per run: the run's memory, processes and CPU time, counted and bounded as a whole.

Per-process limits (rlimits) cannot bound a run: six forked children each get the full memory
limit, and the CPU time of children that nobody reaps is seen by nobody. A cgroup holds every
process the program starts, wherever it forks, re-parents or hides them, so:

- memory: the kernel's `memory.max` (v2) / `memory.limit_in_bytes` (v1, with swap bounded too
  where the kernel accounts it) caps the run's resident memory, its /tmp files (tmpfs pages are
  charged to their writer) and kernel memory; past it the OOM killer ends a process of the run
  (counted in memory.events / memory.oom_control, which the result reads as MEMORY_LIMIT).
  Address space is not limited, so thread stacks and malloc arenas, which only reserve it, cost
  nothing (an rlimit on address space failed 4 Python threads at 256 MB).
- processes: `pids.max` counts every process and thread of the run.
- CPU: `cpu.stat` (v2) / `cpuacct.usage` (v1) is the exact CPU time of everything the run
  started; the sandbox's init reads it while the program runs and ends the run at the limit.

Layouts: cgroup v2 with the memory and pids controllers (a folder `verl-avsd-sandbox` under
the hierarchy's root, as root), or cgroup v1 with memory, pids and cpuacct hierarchies (a
folder under this process's own cgroup in each, as on this project's CI machines). Without
either (not root, or a container whose cgroups are read-only) `find_cgroups` says why and the
init falls back to sampling the run's processes (see `_sandbox_init.py`), which is weaker:
the announcement in the log says which one a worker uses.

The host creates the run's cgroup, opens its files, and passes the descriptors into the
sandbox; the program's process joins the cgroup itself (writing to `cgroup.procs`) before it
execs, so the sandbox's init and bwrap stay outside and the OOM killer never picks them.
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from dataclasses import dataclass, field

from verl_avsd.sandbox.result import MIB, Limits

CGROUPS_ENV = "VERL_AVSD_SANDBOX_CGROUPS"  # "0" turns cgroups off (the sampling fallback)
BASE_NAME = "verl-avsd-sandbox"
V1_CONTROLLERS = ("memory", "pids", "cpuacct")
V2_CONTROLLERS = ("memory", "pids")
EMPTY_WAIT_S = 2.0  # after the run is killed, how long its processes may take to be gone

_run_counter = itertools.count()


class CgroupsUnavailable(OSError):
    """This machine (or this user) cannot give each run its own cgroup; the message says why."""


@dataclass(frozen=True)
class CgroupSupport:
    """Where this process creates its runs' cgroups."""

    version: str  # "v2" | "v1"
    bases: dict[str, str]  # controller -> folder holding this process's run cgroups (v2: key "unified")

    def describe(self) -> str:
        if self.version == "v2":
            return "cgroup v2 (memory.max, pids.max, cpu.stat per run)"
        return "cgroup v1 (memory.limit_in_bytes, pids.max, cpuacct.usage per run)"


@dataclass
class RunCgroup:
    """The cgroup of one run (one folder per hierarchy). Use `RunCgroup.create`, then `close`."""

    support: CgroupSupport
    dirs: dict[str, str]  # controller (or "unified") -> this run's folder
    procs_fds: list[int] = field(default_factory=list)  # cgroup.procs of each hierarchy, for writing
    cpu_fd: int = -1  # cpu.stat (v2) / cpuacct.usage (v1), for reading

    @classmethod
    def create(cls, support: CgroupSupport, limits: Limits) -> RunCgroup:
        name = f"run-{os.getpid()}-{next(_run_counter)}"
        run = cls(support, {key: os.path.join(base, name) for key, base in support.bases.items()})
        try:
            for folder in run.dirs.values():
                os.mkdir(folder, 0o755)
            memory_bytes = str(limits.memory_mb * MIB)
            if support.version == "v2":
                folder = run.dirs["unified"]
                _write(folder, "memory.max", memory_bytes)
                _write(folder, "memory.swap.max", "0", optional=True)
                _write(folder, "pids.max", str(limits.max_processes))
                run.cpu_fd = os.open(os.path.join(folder, "cpu.stat"), os.O_RDONLY | os.O_CLOEXEC)
            else:
                _write(run.dirs["memory"], "memory.limit_in_bytes", memory_bytes)
                _write(run.dirs["memory"], "memory.memsw.limit_in_bytes", memory_bytes, optional=True)
                _write(run.dirs["pids"], "pids.max", str(limits.max_processes))
                run.cpu_fd = os.open(os.path.join(run.dirs["cpuacct"], "cpuacct.usage"), os.O_RDONLY | os.O_CLOEXEC)
            for folder in run.dirs.values():
                run.procs_fds.append(os.open(os.path.join(folder, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except BaseException:
            run.close()
            raise
        return run

    @property
    def cpu_format(self) -> str:
        """How the init reads `cpu_fd`: "usage_usec" (v2 cpu.stat) or "ns" (v1 cpuacct.usage)."""
        return "usage_usec" if self.support.version == "v2" else "ns"

    @property
    def fds(self) -> list[int]:
        return [*self.procs_fds, self.cpu_fd]

    def cpu_seconds(self) -> float:
        return read_cpu_seconds(self.cpu_fd, self.cpu_format)

    def oom_kills(self) -> int:
        """How many of the run's processes the OOM killer ended (the run reached its memory limit)."""
        if self.support.version == "v2":
            counts = _key_values(_read(self.dirs["unified"], "memory.events"))
            return counts.get("oom_kill", 0)
        counts = _key_values(_read(self.dirs["memory"], "memory.oom_control"))
        if "oom_kill" in counts:
            return counts["oom_kill"]
        return int(_read(self.dirs["memory"], "memory.failcnt") or 0)  # kernels before 4.13

    def kill_and_wait(self) -> bool:
        """Wait (briefly) until nothing of the run is left; True once its cgroup is empty.

        Every process of the cgroup is in the run's pid namespace, which the kernel empties
        when the sandbox's init dies; v2 also kills the cgroup directly (cgroup.kill). v1 has no
        such file, and killing the pids listed in cgroup.procs could hit a recycled pid.
        """
        deadline = time.monotonic() + EMPTY_WAIT_S
        can_kill = self.support.version == "v2" and os.path.exists(os.path.join(self.dirs["unified"], "cgroup.kill"))
        while self._pids():
            if time.monotonic() > deadline:
                return False
            if can_kill:
                _write(self.dirs["unified"], "cgroup.kill", "1", optional=True)
            time.sleep(0.002)
        return True

    def close(self) -> None:
        """Close the descriptors, wait until the run is gone and remove its folders."""
        for fd in [*self.procs_fds, self.cpu_fd]:
            if fd >= 0:
                os.close(fd)
        self.procs_fds, self.cpu_fd = [], -1
        if any(os.path.isdir(folder) for folder in self.dirs.values()):
            self.kill_and_wait()
        for folder in self.dirs.values():
            try:
                os.rmdir(folder)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # still busy: `find_cgroups` in a later process sweeps it

    def _pids(self) -> list[int]:
        pids: set[int] = set()
        for folder in self.dirs.values():
            try:
                pids.update(int(line) for line in _read(folder, "cgroup.procs").split())
            except FileNotFoundError:
                continue
        return sorted(pids)


def read_cpu_seconds(fd: int, cpu_format: str) -> float:
    text = os.pread(fd, 4096, 0).decode()
    if cpu_format == "ns":
        return int(text.strip() or 0) / 1e9
    return _key_values(text).get("usage_usec", 0) / 1e6


def find_cgroups(*, enabled: bool | None = None) -> tuple[CgroupSupport | None, str]:
    """(support, "") when runs can get their own cgroups here, else (None, why not).

    enabled=False (or VERL_AVSD_SANDBOX_CGROUPS=0) turns them off; None means use them if possible.
    """
    if enabled is None:
        enabled = os.environ.get(CGROUPS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    if not enabled:
        return None, f"turned off (cgroups=False or {CGROUPS_ENV}=0)"
    mounts = _cgroup_mounts()
    membership = _own_cgroups()
    reasons = []
    for finder in (_v2_support, _v1_support):
        try:
            support = finder(mounts, membership)
            _probe(support)
            _sweep_stale_runs(support)
            return support, ""
        except (OSError, KeyError, ValueError) as exc:
            reasons.append(f"{finder.__name__[1:3]}: {exc}")
    return None, "; ".join(reasons)


def _v2_support(mounts, membership) -> CgroupSupport:
    root = mounts.get("cgroup2")
    if root is None:
        raise CgroupsUnavailable(errno.ENOENT, "no cgroup2 filesystem is mounted")
    available = set(_read(root, "cgroup.controllers").split())
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        raise CgroupsUnavailable(errno.ENOENT, f"{root} lacks the {', '.join(missing)} controller (bound to v1?)")
    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    if not set(V2_CONTROLLERS) <= set(_read(root, "cgroup.subtree_control").split()):
        _write(root, "cgroup.subtree_control", enable)
    base = os.path.join(root, BASE_NAME)
    os.makedirs(base, exist_ok=True)
    _write(base, "cgroup.subtree_control", enable)
    return CgroupSupport("v2", {"unified": base})


def _v1_support(mounts, membership) -> CgroupSupport:
    bases = {}
    for controller in V1_CONTROLLERS:
        if controller not in mounts:
            raise CgroupsUnavailable(errno.ENOENT, f"no cgroup v1 hierarchy with the {controller} controller")
        mount_point, mount_root = mounts[controller]
        own = membership.get(controller, "/")
        relative = os.path.relpath(own, mount_root) if own.startswith(mount_root) else "."
        base = os.path.normpath(os.path.join(mount_point, relative, BASE_NAME))
        os.makedirs(base, exist_ok=True)
        bases[controller] = base
    return CgroupSupport("v1", bases)


def _probe(support: CgroupSupport) -> None:
    """Create, limit and remove one run cgroup, so a half-working setup is found before any run."""
    RunCgroup.create(support, Limits()).close()


def _sweep_stale_runs(support: CgroupSupport) -> None:
    """Remove empty run cgroups left by processes that died (run-<pid>-<n> with <pid> gone)."""
    for base in support.bases.values():
        for name in os.listdir(base):
            parts = name.split("-")
            if len(parts) == 3 and parts[0] == "run" and parts[1].isdigit() and not _alive(int(parts[1])):
                try:
                    os.rmdir(os.path.join(base, name))
                except OSError:
                    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _cgroup_mounts() -> dict:
    """{"cgroup2": mount point, v1 controller: (mount point, root inside the hierarchy)}"""
    found: dict = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, tail_fields = head.split(), tail.split()
            if len(tail_fields) < 3:
                continue
            fstype, super_options = tail_fields[0], tail_fields[2].split(",")
            if fstype == "cgroup2":
                found.setdefault("cgroup2", fields[4])
            elif fstype == "cgroup":
                for controller in V1_CONTROLLERS:
                    if controller in super_options:
                        found.setdefault(controller, (fields[4], fields[3]))
    return found


def _own_cgroups() -> dict[str, str]:
    """v1 controller -> this process's cgroup path in that hierarchy (from /proc/self/cgroup)."""
    membership = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                if controller:
                    membership[controller] = path
    return membership


def _key_values(text: str) -> dict[str, int]:
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


def _read(folder: str, name: str) -> str:
    with open(os.path.join(folder, name)) as f:
        return f.read()


def _write(folder: str, name: str, value: str, *, optional: bool = False) -> None:
    try:
        with open(os.path.join(folder, name), "w") as f:
            f.write(value)
    except OSError as exc:
        if optional and exc.errno in (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP):
            return
        raise CgroupsUnavailable(exc.errno, f"cannot write {value!r} to {os.path.join(folder, name)}: {exc.strerror}") from exc
