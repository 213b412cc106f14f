"""How a program is isolated: the filesystem it sees, the namespaces it lives in, the user it runs as.

Two local isolations build the same sandbox from one mount plan (`mount_plan`):

- `bwrap` (bubblewrap, preferred): `bwrap` runs the plan and creates the namespaces.
- `unshare` (fallback, needs root): util-linux `unshare` creates the namespaces and the
  sandbox's init runs the plan with mount(2) and pivot_root(2).

Either way `_sandbox_init.py` is pid 1 of the sandbox: it dies with its parent, so killing the
wrapper ends every process the program started; it counts the CPU time of the whole run and
reports the program's exact exit status.

What the program sees either way is built from an allow-list, never from the host's root with
holes in it: on an empty root, read-only, only the system folders a program and its interpreter
or compiler need (/usr without /usr/local, /lib*, /bin and /sbin, the dynamic linker's cache
and the time zone from /etc), the interpreter's installation folder with its site-packages
hidden (standard library only, even through sys.path), a private size-limited /tmp (its working
directory, holding a read-only copy of its code), a private /dev/shm, a /dev with only null,
zero, full, random and urandom, and a /proc of its own pid namespace. The checkout, data files,
virtual environments, home folders, /var, /run, /sys and every host unix socket are simply not
there. No network (an empty network namespace) and no other run's files.

Then `inner_command` wraps the program: `setpriv` makes it a throwaway user (when we are root,
so RLIMIT_NPROC applies, which the kernel ignores for root, and root-only files stay closed) and
sets no_new_privs (no setuid binary can give privileges back); `prlimit` sets per-process CPU
time, processes/threads, file size, open files, stack and core limits. The run as a whole is
bounded by its cgroup (`cgroup.py`) and its system calls by a seccomp filter (`seccomp.py`).
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import random
import resource
import shutil
import sys
from dataclasses import asdict, dataclass

from verl_avsd.sandbox.result import MIB, Limits

LOCAL_ISOLATIONS = ("bwrap", "unshare")
SANDBOX_CWD = "/tmp"  # the private tmpfs: working directory, HOME and TMPDIR of the program
SHM_BYTES = 16 * MIB
HIDE_BYTES = 4096  # an empty read-only tmpfs laid over a folder the program must not see
MIN_BWRAP_VERSION = (0, 7, 0)  # --size: without it a tmpfs may grow to half the machine's memory
WATCH_POLL_S = 0.02  # how often the init checks the run's CPU time (and, without cgroups, memory)

# The allow-list. Top-level folders (or merged-/usr symlinks to them) bound read-only:
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /usr/local holds whatever was installed by hand (pip packages, tools with credentials): hidden
# unless an interpreter or compiler lives there, in which case only its own folder comes back.
HIDDEN_SYSTEM_FOLDERS = ("/usr/local",)
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
# Python package folders under an allowed folder: hidden so that `-I -S` cannot be undone with
# sys.path.insert (relative to a bound tool path, its lib folder, or /usr).
PACKAGE_FOLDER_PATTERNS = ("python3*/site-packages", "python3*/dist-packages", "python3/dist-packages")

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
    """One step of the sandbox's filesystem layout, applied in order on an empty root."""

    kind: str  # "ro-bind" | "bind" | "symlink" | "tmpfs" | "dir" | "dev" | "proc" | "remount-ro"
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


def _hide(path: str) -> list[Mount]:
    return [Mount("tmpfs", path, mode=0o555, size_bytes=HIDE_BYTES), Mount("remount-ro", path)]


def _is_under(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _visible_by_default(path: str) -> bool:
    """Whether `path` is inside an allowed system folder (and not inside a hidden one)."""
    allowed = any(_is_under(path, top) for top in SYSTEM_FOLDERS if os.path.isdir(top) and not os.path.islink(top))
    return allowed and not any(_is_under(path, hidden) for hidden in HIDDEN_SYSTEM_FOLDERS)


def mount_plan(
    *,
    files: list[tuple[str, str]],
    writable_dirs: list[tuple[str, str]],
    scratch_bytes: int,
    tool_paths: list[str],
    hidden_dirs: list[str] = (),
) -> list[Mount]:
    """The filesystem of one run, from the allow-list.

    files: (host path, sandbox path) bound read-only (the program's code or binary).
    writable_dirs: (host dir, sandbox dir) bound read-write (the compiler's output folder).
    tool_paths: what the interpreter and compiler need (their files or installation folders,
    bound read-only, package folders hidden). hidden_dirs: host folders to hide should they lie
    inside an allowed one (the folder holding every run's files).
    """
    static = _system_plan(tuple(tool_paths), tuple(hidden_dirs), scratch_bytes)
    dynamic = [Mount("ro-bind", target, source=host) for host, target in files]
    dynamic += [Mount("bind", target, source=host) for host, target in writable_dirs]
    return _with_parent_folders([*static, *dynamic, Mount("remount-ro", "/")])


@functools.lru_cache(maxsize=64)
def _system_plan(tool_paths: tuple[str, ...], hidden_dirs: tuple[str, ...], scratch_bytes: int) -> tuple[Mount, ...]:
    """The part of the plan that is the same for every run of a backend (its many path checks
    took ~10 ms per run on a busy machine)."""
    plan = []
    for top in SYSTEM_FOLDERS:
        if os.path.islink(top):  # merged /usr: /bin -> usr/bin
            plan.append(Mount("symlink", top, source=os.readlink(top)))
        elif os.path.isdir(top):
            plan.append(Mount("ro-bind", top, source=top))
    for hidden in HIDDEN_SYSTEM_FOLDERS:
        if os.path.isdir(hidden) and not os.path.islink(hidden) and _visible_by_default(os.path.dirname(hidden)):
            plan += _hide(hidden)
    plan += [Mount("ro-bind", path, source=path) for path in SYSTEM_FILES if os.path.exists(path)]
    plan += [Mount("dev", "/dev"), Mount("proc", "/proc")]
    plan.append(Mount("tmpfs", SANDBOX_CWD, mode=0o1777, size_bytes=scratch_bytes))
    plan.append(Mount("tmpfs", "/dev/shm", mode=0o1777, size_bytes=SHM_BYTES))
    prefixes = list(dict.fromkeys(os.path.realpath(p) for p in tool_paths))
    for prefix in prefixes:
        if not _visible_by_default(prefix):
            plan.append(Mount("ro-bind", prefix, source=prefix))
    for folder in sorted({p for prefix in [*prefixes, "/usr"] for p in _package_folders(prefix)}):
        plan += _hide(folder)
    for hidden in hidden_dirs:
        if _visible_by_default(hidden) or any(_is_under(hidden, prefix) for prefix in prefixes):
            plan += _hide(hidden)
    return tuple(plan)


def _with_parent_folders(plan: list[Mount]) -> list[Mount]:
    """`plan` with a world-readable folder step before each mount whose parents are not there yet.

    bwrap makes missing parents 0700, so a throwaway user could not reach an interpreter bound
    at /root/.pyenv/... or read /etc/ld.so.cache; these steps make them 0755 first.
    """
    out: list[Mount] = []
    made: dict[str, str | None] = {"/": None}  # sandbox folder -> host folder bound there (None: empty)

    def exists(path: str) -> bool:
        for target, source in made.items():
            if path == target:
                return True
            if source is not None and path.startswith(target.rstrip("/") + "/"):
                return os.path.isdir(source + path[len(target.rstrip("/")) :])
        return False

    for step in plan:
        if step.kind != "remount-ro":
            parent, missing = os.path.dirname(step.target.rstrip("/")), []
            while not exists(parent):
                missing.append(parent)
                parent = os.path.dirname(parent)
            for folder in reversed(missing):
                out.append(Mount("dir", folder, mode=0o755))
                made[folder] = None
            bound = step.kind in ("ro-bind", "bind") and os.path.isdir(step.source)
            made[step.target] = step.source if bound else None
        out.append(step)
    return out


def _package_folders(path: str) -> list[str]:
    found = []
    for folder in (path, os.path.join(path, "lib"), os.path.join(path, "lib64")):
        for pattern in PACKAGE_FOLDER_PATTERNS:
            found += [p for p in glob.glob(os.path.join(folder, pattern)) if os.path.isdir(p) and not os.path.islink(p)]
    return found


def inner_command(argv: list[str], limits: Limits, uid: int | None) -> list[str]:
    """`argv` wrapped in setpriv (user, no_new_privs) and prlimit (per-process limits).

    No address-space limit: it counts what threads and malloc arenas merely reserve (64 MB per
    thread stack), so it failed 4 Python threads at 256 MB; memory is bounded per run instead.
    """
    user = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
    # A second past the limit: the init ends the run at the limit itself, by the exact (cgroup)
    # clock; RLIMIT_CPU, by the kernel's tick-sampled clock (ahead of the exact one by up to a
    # quarter on a busy machine), is only the backstop should the init not.
    cpu_backstop = math.ceil(limits.time_limit_s) + 1
    # The stack's hard limit stays where it is (unlimited, usually): contest programs raise their
    # own (`resource.setrlimit(RLIMIT_STACK, (2**29, -1))`), and memory is bounded per run anyway.
    stack_hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    stack_hard = "unlimited" if stack_hard == resource.RLIM_INFINITY else max(stack_hard, limits.stack_mb * MIB)
    return [
        _tool("setpriv"), *user, "--no-new-privs", "--",
        _tool("prlimit"),
        f"--cpu={cpu_backstop}:{cpu_backstop}",  # per process (SIGKILL; a pid 1 would ignore SIGXCPU)
        f"--nproc={limits.max_processes}",
        f"--fsize={limits.max_file_mb * MIB}",
        f"--nofile={limits.max_open_files}",
        f"--stack={limits.stack_mb * MIB}:{stack_hard}",
        "--core=0",
        "--",
        *argv,
    ]  # fmt: skip


@functools.lru_cache(maxsize=4)
def _init_source(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def init_plan(mounts: list[Mount], limits: Limits, *, cgroup, seccomp_hex: str, pivot_root_nr: int) -> dict:
    """What the init needs to know: the mounts it applies (unshare), the limits it watches."""
    return {
        "mounts": [asdict(m) for m in mounts],
        "cwd": SANDBOX_CWD,
        "wall_limit_s": limits.wall_limit_s,
        "cpu_limit_s": limits.time_limit_s,
        "memory_limit_bytes": limits.memory_mb * MIB,
        "poll_s": WATCH_POLL_S,
        "cgroup": None if cgroup is None else {
            "procs_fds": cgroup.procs_fds, "cpu_fd": cgroup.cpu_fd, "cpu_format": cgroup.cpu_format,
        },
        "seccomp": seccomp_hex,
        "pivot_root_nr": pivot_root_nr,
    }  # fmt: skip


def init_command(plan: dict, inner: list[str], *, status_fd: int) -> list[str]:
    """The sandbox's pid 1, run from its source text: no file of the checkout need be visible."""
    # the real interpreter, not a venv's link to it: the init needs only the standard library
    python = os.path.realpath(sys.executable)
    source = _init_source(SANDBOX_INIT)
    return [python, "-I", "-S", "-c", source, str(status_fd), json.dumps(plan), "--", *inner]


def bwrap_command(mounts: list[Mount], plan: dict, inner: list[str], *, status_fd: int, as_root: bool) -> list[str]:
    """bwrap applies `mounts` and creates the namespaces; our init runs as pid 1 inside."""
    cmd = [_tool("bwrap")]
    for m in mounts:
        if m.kind == "tmpfs":
            cmd += ["--perms", f"{m.mode:o}", "--size", str(m.size_bytes), "--tmpfs", m.target]
        elif m.kind == "dir":
            cmd += ["--perms", f"{m.mode:o}", "--dir", m.target]
        elif m.kind in ("ro-bind", "bind", "symlink"):
            cmd += [f"--{m.kind}", m.source, m.target]
        elif m.kind in ("dev", "proc", "remount-ro"):
            cmd += [f"--{m.kind}", m.target]
        else:
            raise ValueError(f"unknown mount step {m.kind!r}")
    if as_root:
        # Root keeps its uid in the sandbox (no user namespace, whose uid map would hold only
        # root) and only the capabilities setpriv needs to become the throwaway user. No cgroup
        # namespace: the program's process joins the run's cgroup from inside, after bwrap.
        cmd += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-all"]  # with a user namespace, which is how bwrap works unprivileged
    cmd += ["--as-pid-1", "--die-with-parent", "--new-session", "--chdir", SANDBOX_CWD]
    return cmd + ["--", *init_command({**plan, "mounts": []}, inner, status_fd=status_fd)]


def unshare_command(plan: dict, inner: list[str], *, status_fd: int) -> list[str]:
    """unshare creates the namespaces; our init, pid 1 inside, builds the root from the plan."""
    namespaces = ["--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]
    return [_tool("unshare"), *namespaces, "--", *init_command(plan, inner, status_fd=status_fd)]


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
