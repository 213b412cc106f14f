"""Pid 1 of every sandbox: build its filesystem (unshare only), start the program, watch it, report.

Started by bwrap (`--as-pid-1`) or by `unshare --fork` as the first process of the sandbox's
pid namespace, from its source text (`python -I -S -c SOURCE`, so no file of the checkout has
to be visible inside):

    python -I -S -c SOURCE STATUS_FD PLAN_JSON -- ARGV...

1. It asks for SIGKILL when its parent (bwrap or unshare) dies, and keeps its own wall clock:
   either way it dies, and the kernel then kills every process of the namespace, however the
   program hid them (new sessions, daemons). The program itself cannot keep this: the kernel
   clears the parent-death signal when a process changes user. It makes itself non-dumpable and
   installs no signal handler, so that even a program running as the same user (bwrap without
   root) can neither open its descriptors through /proc/1/fd (to forge its report) nor signal
   it (the kernel drops signals to a namespace's init that it does not handle).
2. Under unshare (a non-empty `mounts`; bwrap does this itself), as real root in fresh mount,
   network, pid, ipc and uts namespaces: it builds a new root on a tmpfs from the plan's steps
   (read-only binds of the allowed system folders and the interpreter, a fresh /dev and /proc,
   a private /tmp, ...), pivots into it and detaches the host's root, so nothing else of the
   host is reachable, by path or by a unix socket's name.
3. It writes "ready" on STATUS_FD and forks the program's process, which, still as root, joins
   the run's cgroup (when the host made one), opens its stdin/stdout pipes to the user it will
   become (so /dev/stdin and /proc/self/fd/0 can be reopened), installs the seccomp filter, and
   execs ARGV (setpriv drops the user, prlimit sets the per-process limits).
4. Until the program exits it counts the CPU time of everything the run started (the cgroup's
   counter, or else the sum over every process of its namespace plus all it reaped) and, without
   a cgroup, the run's proportional memory (Pss); over a limit it reports "limit cpu|memory N"
   and exits, which ends the namespace. When the program exits it reports "exit WAIT_STATUS
   CPU_SECONDS", the exact wait status and CPU time, which the host cannot see through bwrap.

Any failure of the set-up is reported as "error ..." on STATUS_FD: a sandbox error, never the
program's. Standard library only, no imports from the package: this runs under `python -I -S`.
"""

import ctypes
import json
import math
import os
import resource
import signal
import sys
import time

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
NEW_ROOT = "/tmp"  # in this private mount namespace a tmpfs over /tmp becomes the new root
ROOT_BYTES = 1 << 20  # the new root holds only folders and mount points
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"))  # fmt: skip

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class SockFprog(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source, target, fstype, flags, data=None):
    def enc(text):
        return None if text is None else text.encode()

    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount({source!r}, {target!r})")


# -- the new root (unshare only) ------------------------------------------------------------


def _mount_point(target, is_dir):
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()


def _bind(fd, target, flags):
    """Bind the pre-opened source `fd` at `target`, then apply `flags` (a bind copies its source's)."""
    _mount_point(target, os.path.isdir(f"/proc/self/fd/{fd}"))
    mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
    mount(None, target, None, MS_BIND | MS_REMOUNT | flags)


def _tmpfs(target, mode, size):
    os.makedirs(target, exist_ok=True)
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode:o},size={size}")


def build_root(steps, pivot_root_nr):
    """Lay out the plan's steps on a fresh tmpfs, pivot into it, and drop the host's root."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # unshare did this already; never rely on it
    # Every bind source is opened first: the tmpfs over /tmp hides any that lives there.
    wanted = [s["source"] for s in steps if s["kind"] in ("ro-bind", "bind")]
    wanted += [f"/dev/{name}" for s in steps if s["kind"] == "dev" for name in DEVICES]
    sources = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in dict.fromkeys(wanted)}
    _tmpfs(NEW_ROOT, 0o755, ROOT_BYTES)
    for step in steps:
        kind, target = step["kind"], NEW_ROOT + step["target"].rstrip("/")
        if kind == "tmpfs":
            _tmpfs(target, step["mode"], step["size_bytes"])
        elif kind == "dir":
            os.makedirs(target, exist_ok=True)
            os.chmod(target, step["mode"])
        elif kind == "symlink":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(step["source"], target)
        elif kind in ("ro-bind", "bind"):
            read_only = MS_RDONLY if kind == "ro-bind" else 0
            _bind(sources[step["source"]], target, MS_NOSUID | MS_NODEV | read_only)
        elif kind == "dev":  # what bwrap's --dev gives: only the harmless devices
            _tmpfs(target, 0o755, 1 << 20)
            for name in DEVICES:
                _bind(sources[f"/dev/{name}"], f"{target}/{name}", MS_NOSUID | MS_NOEXEC)
            for name, link in DEV_LINKS:
                os.symlink(link, f"{target}/{name}")
        elif kind == "proc":  # this pid namespace's processes only
            os.makedirs(target, exist_ok=True)
            mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif kind == "remount-ro":
            mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        else:
            raise ValueError(f"unknown mount step {kind!r}")
    for fd in sources.values():
        os.close(fd)
    # pivot_root(".", "."): the old root ends up stacked on the new one, and is then detached.
    os.chdir(NEW_ROOT)
    _check(_libc.syscall(pivot_root_nr, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount2(old root)")
    os.chdir("/")


# -- the program's process, between fork and exec -------------------------------------------


def install_seccomp(program):
    """Install a classic-BPF seccomp filter (struct sock_filter array) on this process."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp filter")


def start_program(plan, program, status_fd):
    """In the forked child: join the cgroup, open stdio, filter syscalls, exec. Never returns."""
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for fd in plan["cgroup"]["procs_fds"] if plan["cgroup"] else ():
            os.write(fd, b"0")  # "0": this process; its children are born inside
        for fd in (0, 1, 2):
            try:
                os.fchmod(fd, 0o666)  # our private pipes: reopening them needs the program's user to be allowed
            except OSError:
                pass
        install_seccomp(bytes.fromhex(plan["seccomp"]))
        os.execve(program[0], program, os.environ)
    except BaseException as exc:  # noqa: BLE001 -- reported to the host as a sandbox error
        try:
            os.write(status_fd, f"error cannot start the program: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(127)


# -- counting what the run uses --------------------------------------------------------------


class CgroupMeter:
    """The run's CPU time from its cgroup's counter (exact); memory is the kernel's to bound."""

    exact = True

    def __init__(self, fd, cpu_format):
        self.fd, self.cpu_format = fd, cpu_format

    def sample(self):
        text = os.pread(self.fd, 4096, 0).decode()
        if self.cpu_format == "ns":
            return int(text.strip() or 0) / 1e9, 0
        usage = next((line.split()[1] for line in text.splitlines() if line.startswith("usage_usec ")), "0")
        return int(usage) / 1e6, 0


class NamespaceMeter:
    """Without a cgroup: every process of this pid namespace, sampled from /proc.

    CPU = what this init reaped (its children's rusage: a reaped process brings along all it
    reaped itself) + for each live or zombie process its own and its reaped children's time.
    A process reaped between two reads may be counted twice in one sample, so the caller acts
    only on two samples in a row. Memory = the sum of Pss (shared pages split between sharers).
    """

    exact = False

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.me = str(os.getpid())

    def sample(self):
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu, memory = usage.ru_utime + usage.ru_stime, 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == self.me:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                cpu += sum(int(x) for x in fields[11:15]) / self.tick  # utime stime cutime cstime
                memory += self._pss(pid, int(fields[21]))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
        return cpu, memory

    def _pss(self, pid, rss_pages):
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return rss_pages * self.page


def watch(plan, child, status_fd, deadline):
    """Reap, count and enforce until the program exits; then report and end the namespace."""
    cgroup = plan["cgroup"]
    meter = CgroupMeter(cgroup["cpu_fd"], cgroup["cpu_format"]) if cgroup else NamespaceMeter()
    memory_limit = None if cgroup else plan["memory_limit_bytes"]
    cpu_limit, poll_s = plan["cpu_limit_s"], plan["poll_s"]
    over = 0
    while True:
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid == child:
                cpu, _ = meter.sample()
                os.write(status_fd, f"exit {status} {cpu:.6f}\n".encode())
                # Exiting ends the namespace: the kernel kills whatever the program left behind.
                os._exit(os.waitstatus_to_exitcode(status) % 256)
        cpu, memory = meter.sample()
        over = over + 1 if cpu > cpu_limit else 0
        if over >= (1 if meter.exact else 2):
            os.write(status_fd, f"limit cpu {cpu:.6f}\n".encode())
            os._exit(124)
        if memory_limit is not None and memory > memory_limit:
            os.write(status_fd, f"limit memory {memory} {cpu:.6f}\n".encode())
            os._exit(124)
        if time.monotonic() > deadline:  # the host's clock failed us (a busy host): a wall timeout all the same
            os.write(status_fd, f"limit wall {cpu:.6f}\n".encode())
            os._exit(124)
        signal.sigtimedwait([signal.SIGCHLD], poll_s)


def main(argv):
    status_fd, plan_json, separator, *program = argv
    status_fd = int(status_fd)
    if separator != "--" or not program:
        raise SystemExit("usage: python -c SOURCE STATUS_FD PLAN_JSON -- ARGV...")
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    plan = json.loads(plan_json)
    deadline = time.monotonic() + math.ceil(float(plan["wall_limit_s"])) + 2  # our own clock, if the host's fails
    signal.alarm(math.ceil(float(plan["wall_limit_s"])) + 2)  # default action: ends a stuck set-up
    cgroup = plan["cgroup"]
    private_fds = [status_fd] + ([*cgroup["procs_fds"], cgroup["cpu_fd"]] if cgroup else [])
    try:
        for fd in private_fds:
            os.set_inheritable(fd, False)  # the program never gets them (exec closes them)
        if plan["mounts"]:
            build_root(plan["mounts"], plan["pivot_root_nr"])
        os.chdir(plan["cwd"])
    except Exception as exc:  # reported to the host as a sandbox error, never as the program's
        os.write(status_fd, f"error {type(exc).__name__}: {exc}\n".encode())
        raise SystemExit(125) from None
    signal.alarm(0)  # from here on the loop in `watch` keeps the time
    os.write(status_fd, b"ready\n")
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])  # sigtimedwait wakes on each exit
    child = os.fork()
    if child == 0:
        start_program(plan, program, status_fd)
    for fd in plan["cgroup"]["procs_fds"] if plan["cgroup"] else ():
        os.close(fd)
    watch(plan, child, status_fd, deadline)


if __name__ == "__main__":
    main(sys.argv[1:])
