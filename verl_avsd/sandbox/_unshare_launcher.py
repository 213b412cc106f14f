"""Inside `unshare` (fallback isolation, root only): lay out the filesystem, then exec the program.

Run as `python -I -S _unshare_launcher.py PLAN_JSON STATUS_FD -- ARGV...` by
`isolation.unshare_command`, as real root in fresh mount, network, pid, ipc and uts namespaces
(`unshare` made every mount private, so nothing here reaches the host's mount table). It does
what bubblewrap does for the bwrap isolation, from the same mount plan:

1. every existing mount becomes read-only (a bind remount: only this namespace's view changes);
2. the plan's steps run in order: private tmpfs mounts (/tmp, a fresh /dev with null, zero,
   full, random and urandom, /dev/shm, hidden folders), directories, and bind mounts of the
   program and the interpreter;
3. it reports "ready" on STATUS_FD and execs ARGV (setpriv drops to the throwaway user, prlimit
   sets the limits), so the program becomes pid 1 of the namespace: when it exits, the kernel
   kills everything it left behind.

Standard library only and no imports from the package: this file runs under `python -I -S`.
"""

import ctypes
import json
import os
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
    plan_json, status_fd, separator, *program = argv
    status_fd = int(status_fd)
    if separator != "--" or not program:
        raise SystemExit("usage: _unshare_launcher.py PLAN_JSON STATUS_FD -- ARGV...")
    try:
        plan = json.loads(plan_json)
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # unshare did this already; never rely on it
        apply_plan(plan["mounts"])
        os.chdir(plan["cwd"])
    except Exception as exc:  # reported to the parent as a sandbox error, never as the program's
        os.write(status_fd, f"error {type(exc).__name__}: {exc}\n".encode())
        raise SystemExit(125)
    os.write(status_fd, b"ready\n")
    os.close(status_fd)
    os.execve(program[0], program, os.environ)


if __name__ == "__main__":
    main(sys.argv[1:])
