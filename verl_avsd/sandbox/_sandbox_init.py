"""Pid 1 of every sandbox: lay out the filesystem (unshare only), run the program, report.

Started by bwrap (`--as-pid-1`) or by `unshare --fork` as the first process of the sandbox's
pid namespace, before the program drops to its throwaway user:

    python -I -S _sandbox_init.py STATUS_FD WALL_LIMIT_S PLAN_JSON -- ARGV...

1. It asks for SIGKILL when its parent (bwrap or unshare) dies, and arms its own wall-clock
   alarm: either way it dies, and the kernel then kills every process of the namespace, however
   the program hid them (new sessions, daemons). The program itself cannot keep this: the
   kernel clears the parent-death signal when a process changes user.
2. Under unshare (a non-empty plan; bwrap does this itself), as real root in fresh mount,
   network, pid, ipc and uts namespaces whose mounts `unshare` made private: every existing
   mount becomes read-only (a bind remount: only this namespace's view changes), then the
   plan's steps run in order: private tmpfs mounts (/tmp, a fresh /dev with null, zero, full,
   random and urandom, /dev/shm, hidden folders), directories, symlinks, and bind mounts of
   the program and the interpreter.
3. It writes "ready" on STATUS_FD, forks the program (ARGV: setpriv drops the user, prlimit sets
   the limits), reaps every process until the program exits, and writes
   "exit WAIT_STATUS CPU_SECONDS" -- the exact wait status and the CPU time of everything it
   reaped, which the host cannot see through bwrap or unshare.

Standard library only and no imports from the package: this file runs under `python -I -S`.
"""

import ctypes
import json
import math
import os
import signal
import sys

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def mount(source, target, fstype, flags, data=None):
    def enc(text):
        return None if text is None else text.encode()

    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}): {os.strerror(errno)}")


def _unescape(field):
    # /proc/self/mountinfo writes space, tab, newline and backslash as \040 \011 \012 \134.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def remount_everything_read_only():
    """Bind-remount each mount point read-only, keeping its nosuid/nodev/noexec flags."""
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split()
        mount_point, options = _unescape(fields[4]), set(fields[5].split(","))
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for name, bit in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC), ("relatime", MS_RELATIME)):
            if name in options:
                flags |= bit
        try:
            mount(None, mount_point, None, flags)
        except OSError:
            # A mount point hidden under a later mount (listed twice) cannot be reached by
            # path; what matters is that the path now resolves to a read-only mount.
            if os.statvfs(mount_point).f_flag & os.ST_RDONLY == 0:
                raise


def apply_plan(plan):
    # Bind sources are opened first: a later tmpfs (over /tmp, say) may hide them.
    binds = [step for step in plan if step["kind"] in ("bind", "ro-bind")]
    sources = {step["source"]: os.open(step["source"], os.O_PATH | os.O_CLOEXEC) for step in binds}
    remount_everything_read_only()
    for step in plan:
        kind, target = step["kind"], step["target"]
        if kind == "tmpfs":
            os.makedirs(target, exist_ok=True)
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={step['mode']:o},size={step['size_bytes']}")
        elif kind == "dir":
            os.makedirs(target, exist_ok=True)
            os.chmod(target, step["mode"])
        elif kind == "symlink":
            os.symlink(step["source"], target)
        elif kind in ("bind", "ro-bind"):
            fd = sources[step["source"]]
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()
            mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            # A bind copies its source's flags, and every source is read-only by now.
            read_only = MS_RDONLY if kind == "ro-bind" else 0
            mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | read_only)
        else:
            raise ValueError(f"unknown mount step {kind!r}")
    for fd in sources.values():
        os.close(fd)


def main(argv):
    status_fd, wall_limit_s, plan_json, separator, *program = argv
    status_fd = int(status_fd)
    if separator != "--" or not program:
        raise SystemExit("usage: _sandbox_init.py STATUS_FD WALL_LIMIT_S PLAN_JSON -- ARGV...")
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGALRM, lambda *_: os._exit(124))  # our own clock, if the host's fails
    signal.alarm(math.ceil(float(wall_limit_s)) + 2)
    try:
        plan = json.loads(plan_json)
        if plan["mounts"]:
            mount(None, "/", None, MS_REC | MS_PRIVATE)  # unshare did this already; never rely on it
            apply_plan(plan["mounts"])
        os.chdir(plan["cwd"])
    except Exception as exc:  # reported to the host as a sandbox error, never as the program's
        os.write(status_fd, f"error {type(exc).__name__}: {exc}\n".encode())
        raise SystemExit(125) from None
    os.set_inheritable(status_fd, False)  # the program never gets it
    os.write(status_fd, b"ready\n")
    child = os.fork()
    if child == 0:
        try:
            os.execve(program[0], program, os.environ)
        finally:
            os._exit(127)
    cpu = 0.0
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            raise SystemExit(125) from None  # cannot happen: the program is our child
        cpu += usage.ru_utime + usage.ru_stime
        if pid == child:
            os.write(status_fd, f"exit {status} {cpu:.6f}\n".encode())
            # Exiting ends the namespace: the kernel kills whatever the program left behind.
            os._exit(os.waitstatus_to_exitcode(status) % 256)


if __name__ == "__main__":
    main(sys.argv[1:])
