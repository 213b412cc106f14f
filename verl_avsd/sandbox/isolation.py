"""How a program is isolated: the filesystem it sees, the namespaces it lives in, the user it runs as.

Two local isolations build the same sandbox from one mount plan (`mount_plan`):

- `bwrap` (bubblewrap, preferred): `bwrap` runs the plan and creates the namespaces.
- `unshare` (fallback, needs root): util-linux `unshare` creates the namespaces and the
  sandbox's init runs the plan with mount(2).

Either way `_sandbox_init.py` is pid 1 of the sandbox: it dies with its parent, so killing the
wrapper ends every process the program started, and it reports the program's exact exit status
and CPU time.

What the program sees either way: the host's filesystem read-only; a private, size-limited,
writable tmpfs at /tmp (its working directory, holding a read-only copy of its code); a private
/dev/shm; no network (an empty network namespace: connecting anywhere fails with "network
unreachable"); only its own processes (a pid namespace that dies with it); no other run's files.

Then `inner_command` wraps the program: `setpriv` makes it a throwaway user (when we are root,
so RLIMIT_NPROC applies, which the kernel ignores for root, and root-only files stay closed) and
sets no_new_privs (no setuid binary can give privileges back); `prlimit` sets CPU time, address
space, processes/threads, file size, open files, stack and core limits.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import stat
import sys
from dataclasses import asdict, dataclass

from verl_avsd.sandbox.result import MIB, Limits

LOCAL_ISOLATIONS = ("bwrap", "unshare")
SANDBOX_CWD = "/tmp"  # the private tmpfs: working directory, HOME and TMPDIR of the program
SHM_BYTES = 16 * MIB
MIN_BWRAP_VERSION = (0, 7, 0)  # --size: without it a tmpfs may grow to half the machine's memory
SAFE_DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_SYMLINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)

# Each run as root gets its own uid from this range: no real account uses it, and a fresh uid
# has no processes, so RLIMIT_NPROC counts exactly the run's own processes and threads.
THROWAWAY_UID_BASE = 1_500_000_000
THROWAWAY_UID_SPAN = 1 << 24

SANDBOX_INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_init.py")
CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": SANDBOX_CWD,
    "TMPDIR": SANDBOX_CWD,
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}


@dataclass(frozen=True)
class Mount:
    """One step of the sandbox's filesystem layout, applied in order."""

    kind: str  # "tmpfs" | "dir" | "ro-bind" | "bind" | "symlink"
    target: str  # path inside the sandbox
    source: str | None = None  # host path, for binds; the link text, for symlinks
    mode: int = 0o755  # tmpfs and dir
    size_bytes: int = 0  # tmpfs


def running_as_root() -> bool:
    return os.geteuid() == 0


def throwaway_uid() -> int | None:
    """A fresh uid for one run when we are root; None otherwise (the run keeps our own uid)."""
    if not running_as_root():
        return None
    return THROWAWAY_UID_BASE + random.randrange(THROWAWAY_UID_SPAN)


def _others_can_traverse(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    except OSError:
        return False


def reachable_path_mounts(path: str) -> list[Mount]:
    """Mounts that let a throwaway user reach `path` (e.g. an interpreter under /root, 0700).

    A tmpfs replaces the topmost ancestor that others cannot enter (which also hides the rest
    of it), world-traversable directories are made down to `path`, and `path` is bound back
    read-only. [] when every ancestor is already world-traversable.
    """
    path = os.path.realpath(path)
    ancestors = []
    head = path
    while head != "/":
        head = os.path.dirname(head)
        ancestors.append(head)
    ancestors.reverse()  # "/", "/root", "/root/.pyenv", ...
    blocked = next((a for a in ancestors if not _others_can_traverse(a)), None)
    if blocked is None:
        return []
    mounts = [Mount("tmpfs", blocked, mode=0o755, size_bytes=MIB)]
    for directory in ancestors[ancestors.index(blocked) + 1 :]:
        mounts.append(Mount("dir", directory, mode=0o755))
    mounts.append(Mount("ro-bind", path, source=path))
    return mounts


def mount_plan(
    *,
    files: list[tuple[str, str]],
    writable_dirs: list[tuple[str, str]],
    scratch_bytes: int,
    hidden_dirs: list[str],
    tool_paths: list[str],
    drop_user: bool,
    own_dev: bool,
) -> list[Mount]:
    """The filesystem of one run.

    files: (host path, sandbox path) bound read-only (the program's code or binary).
    writable_dirs: (host dir, sandbox dir) bound read-write (the compiler's output folder).
    hidden_dirs: host folders replaced by an empty tmpfs (the folder holding every run's files).
    tool_paths: folders the program must reach (interpreter prefix), made reachable when the
    run drops to a throwaway user.
    own_dev: build /dev here (unshare); bwrap builds it itself with --dev.
    """
    mounts = [Mount("tmpfs", SANDBOX_CWD, mode=0o1777, size_bytes=scratch_bytes)]
    if own_dev:  # what bwrap's --dev gives: a fresh /dev with only the harmless devices
        mounts.append(Mount("tmpfs", "/dev", mode=0o755, size_bytes=MIB))
        mounts += [Mount("bind", f"/dev/{name}", source=f"/dev/{name}") for name in SAFE_DEVICES]
        mounts += [Mount("symlink", f"/dev/{name}", source=link) for name, link in DEV_SYMLINKS]
    mounts.append(Mount("tmpfs", "/dev/shm", mode=0o1777, size_bytes=SHM_BYTES))
    for hidden in hidden_dirs:
        if not _is_under(hidden, SANDBOX_CWD):  # under /tmp it is hidden already
            mounts.append(Mount("tmpfs", hidden, mode=0o755, size_bytes=MIB))
    if drop_user:
        seen = set()
        for path in tool_paths:
            for step in reachable_path_mounts(path):
                if (step.kind, step.target) not in seen:
                    seen.add((step.kind, step.target))
                    mounts.append(step)
    for host, target in files:
        mounts.append(Mount("ro-bind", target, source=host))
    for host, target in writable_dirs:
        mounts.append(Mount("bind", target, source=host))
    return mounts


def _is_under(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def inner_command(argv: list[str], limits: Limits, uid: int | None) -> list[str]:
    """`argv` wrapped in setpriv (user, no_new_privs) and prlimit (resource limits)."""
    user = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
    cpu_soft = max(1, math.ceil(limits.time_limit_s))
    return [
        _tool("setpriv"), *user, "--no-new-privs", "--",
        _tool("prlimit"),
        f"--cpu={cpu_soft}:{cpu_soft}",  # SIGKILL at the limit (a pid 1 ignores SIGXCPU)
        f"--as={limits.memory_mb * MIB}",
        f"--nproc={limits.max_processes}",
        f"--fsize={limits.max_file_mb * MIB}",
        f"--nofile={limits.max_open_files}",
        f"--stack={limits.stack_mb * MIB}",
        "--core=0",
        "--",
        *argv,
    ]  # fmt: skip


def init_command(mounts: list[Mount], inner: list[str], *, status_fd: int, wall_limit_s: float) -> list[str]:
    """The sandbox's pid 1 (`_sandbox_init.py`), which applies `mounts` (if any) and runs `inner`."""
    plan = json.dumps({"mounts": [asdict(m) for m in mounts], "cwd": SANDBOX_CWD})
    # the real interpreter, not a venv's link to it: the init needs only the standard library
    # (-I -S), and a venv folder may be out of reach inside the sandbox (e.g. under /tmp)
    python = os.path.realpath(sys.executable)
    return [python, "-I", "-S", SANDBOX_INIT, str(status_fd), f"{wall_limit_s:.3f}", plan, "--", *inner]


def bwrap_command(
    mounts: list[Mount], inner: list[str], *, status_fd: int, wall_limit_s: float, as_root: bool
) -> list[str]:
    """bwrap applies `mounts` and creates the namespaces; our init runs as pid 1 inside."""
    cmd = [_tool("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for m in mounts:
        if m.kind == "tmpfs":
            cmd += ["--perms", f"{m.mode:o}", "--size", str(m.size_bytes), "--tmpfs", m.target]
        elif m.kind == "dir":
            cmd += ["--perms", f"{m.mode:o}", "--dir", m.target]
        elif m.kind == "ro-bind":
            cmd += ["--ro-bind", m.source, m.target]
        elif m.kind == "bind":
            cmd += ["--bind", m.source, m.target]
        elif m.kind == "symlink":
            cmd += ["--symlink", m.source, m.target]
        else:
            raise ValueError(f"unknown mount step {m.kind!r}")
    if as_root:
        # Root keeps its uid in the sandbox (no user namespace, whose uid map would hold only
        # root) and only the two capabilities setpriv needs to become the throwaway user.
        cmd += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-all"]  # with a user namespace, which is how bwrap works unprivileged
    # bwrap mounts the private /tmp before it starts our init, so an init script or interpreter
    # that lives under the host's /tmp (a checkout or a Python installed there) is bound back,
    # read-only, at its own path; without this the sandbox cannot start from such a checkout.
    for host in (SANDBOX_INIT, _interpreter_prefix()):
        if _is_under(host, SANDBOX_CWD):
            cmd += ["--ro-bind", host, host]
    cmd += ["--as-pid-1", "--die-with-parent", "--new-session", "--chdir", SANDBOX_CWD]
    return cmd + ["--", *init_command([], inner, status_fd=status_fd, wall_limit_s=wall_limit_s)]


def _interpreter_prefix() -> str:
    """The installation folder of the interpreter that runs our init (bin/python -> its parent's parent)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))


def unshare_command(mounts: list[Mount], inner: list[str], *, status_fd: int, wall_limit_s: float) -> list[str]:
    """unshare creates the namespaces; our init, pid 1 inside, applies `mounts` itself."""
    namespaces = ["--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
    init = init_command(mounts, inner, status_fd=status_fd, wall_limit_s=wall_limit_s)
    return [_tool("unshare"), *namespaces, "--", *init]


def _tool(name: str) -> str:
    path = shutil.which(name, path=CLEAN_ENV["PATH"] + os.pathsep + os.environ.get("PATH", ""))
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (needed by the code sandbox)")
    return path


def bwrap_version() -> tuple[int, ...]:
    """bubblewrap's version, e.g. (0, 8, 0)."""
    import subprocess

    out = subprocess.run([_tool("bwrap"), "--version"], capture_output=True, text=True, timeout=10).stdout
    return tuple(int(part) for part in out.split()[-1].split(".") if part.isdigit())


def missing_tools(isolation: str) -> list[str]:
    """Tools an isolation needs that this machine lacks."""
    needed = {"bwrap": ["bwrap", "setpriv", "prlimit"], "unshare": ["unshare", "setpriv", "prlimit"]}[isolation]
    missing = []
    for name in needed:
        try:
            _tool(name)
        except FileNotFoundError:
            missing.append(name)
    return missing
