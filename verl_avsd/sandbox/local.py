"""Running a program on this machine under `bwrap` or `unshare` isolation (see `isolation.py`).

A program is first prepared (its code written to a private host folder; C++ compiled, in the
sandbox too) and then run once per input. Each run is one process tree that we start in its own
process group and always end with SIGKILL to that group; the pid namespace takes down anything
the program left behind (a daemon, a fork bomb's leftovers) when the sandbox's first process
ends, and the run's cgroup (`cgroup.py`, where this machine has them) is emptied and removed.
Reading stdout/stderr and writing stdin go through one `select` loop with a deadline, so a
program that floods output, never reads its input or never exits cannot block the caller.
"""

from __future__ import annotations

import atexit
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace

from verl_avsd.sandbox import isolation as iso
from verl_avsd.sandbox import seccomp
from verl_avsd.sandbox.cgroup import RunCgroup, find_cgroups
from verl_avsd.sandbox.result import COMPILE_LIMITS, Limits, RunResult, SandboxUnavailable, Status

PIPE_CHUNK = 64 * 1024
DRAIN_GRACE_S = 0.5  # after the program exits, how long to keep reading what it left in the pipes
EXIT_POLL_S = 0.02  # how often to check for the exit where pidfds are missing (Linux < 5.3)
MEMORY_ERROR_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")

DEFAULT_PYTHON_FLAGS = ("-I", "-S")  # isolated mode, no site-packages: standard library only
DEFAULT_CXX_FLAGS = ("-O2", "-std=c++17", "-pipe")


@dataclass
class PreparedProgram:
    """A program ready to run: `argv` inside the sandbox and the host files it needs."""

    language: str
    host_dir: str  # private host folder holding the code (and the binary)
    argv: list[str]
    files: list[tuple[str, str]]  # (host path, sandbox path), bound read-only
    compile_result: RunResult | None = None  # set for compiled languages; not OK means no binary


class LocalBackend:
    def __init__(
        self,
        isolation: str,
        *,
        python_executable: str | None = None,
        python_flags: tuple[str, ...] = DEFAULT_PYTHON_FLAGS,
        cxx_compiler: str = "g++",
        cxx_flags: tuple[str, ...] = DEFAULT_CXX_FLAGS,
        work_root: str | None = None,
        cgroups: bool | None = None,
    ):
        if isolation not in iso.LOCAL_ISOLATIONS:
            raise ValueError(f"local isolation must be one of {iso.LOCAL_ISOLATIONS}, got {isolation!r}")
        if isolation == "unshare" and not iso.running_as_root():
            raise PermissionError("the unshare isolation needs root (it mounts and switches users); use bwrap")
        missing = iso.missing_tools(isolation)
        if missing:
            raise FileNotFoundError(f"the {isolation} isolation needs {', '.join(missing)}, not found on PATH")
        if isolation == "bwrap" and iso.bwrap_version() < iso.MIN_BWRAP_VERSION:
            found, needed = (".".join(map(str, v)) for v in (iso.bwrap_version(), iso.MIN_BWRAP_VERSION))
            raise ValueError(f"bubblewrap {found} is too old: {needed} or newer bounds the sandbox's /tmp (--size)")
        self.isolation = isolation
        # None: runs are bounded by sampling in the init (see `limits_description`).
        self.cgroups, self.cgroups_unavailable_because = find_cgroups(enabled=cgroups)
        # Fails on an architecture without a syscall table: never run programs unfiltered.
        unsampled = () if self.cgroups is not None else seccomp.UNSAMPLED_MEMORY_SYSCALLS
        self.seccomp_hex = seccomp.program_bytes(also_denied=unsampled).hex()
        self.pivot_root_nr = seccomp.pivot_root_number()
        # The base interpreter, not a venv's symlink: with -S it needs only its own prefix.
        self.python = os.path.realpath(python_executable or sys.executable)
        self.python_flags = tuple(python_flags)
        self.cxx = shutil.which(cxx_compiler)
        self.cxx_flags = tuple(cxx_flags)
        # Every run's files live under one private (0700) folder that sandboxes never see.
        self.base_dir = tempfile.mkdtemp(prefix="verl-avsd-sandbox-", dir=work_root)
        atexit.register(shutil.rmtree, self.base_dir, True)
        # What the sandbox must see of the host: the program's interpreter, the init's (bwrap
        # starts the init inside), the compiler's installation.
        self.tool_paths = [*_interpreter_paths(self.python), *_interpreter_paths(sys.executable)]
        self.tool_paths += [_prefix_of(self.cxx)] if self.cxx else []

    @property
    def limits_description(self) -> str:
        """How runs are bounded as a whole here, in words (the log says it once per worker)."""
        if self.cgroups is not None:
            return f"{self.cgroups.describe()}, seccomp filter"
        return (
            f"NO CGROUPS ({self.cgroups_unavailable_because}): CPU time of the run's processes and their "
            f"memory (Pss) sampled every {iso.WATCH_POLL_S * 1000:.0f} ms, so a burst between samples can "
            "overshoot; CPU of children auto-reaped with SIGCHLD ignored is seen only while they live; files "
            "in /tmp and /dev/shm bounded by those folders' sizes and kernel buffers (socket and pipe data) by the "
            "kernel's per-socket and per-user caps, not by memory_mb (memfd_create and SysV shmget, whose "
            "memory no sample sees, are refused); processes by RLIMIT_NPROC "
            "(per run: a fresh uid when root, else a fresh user namespace on Linux 5.14+); seccomp filter"
        )

    @property
    def languages(self) -> tuple[str, ...]:
        return ("python", "cpp") if self.cxx else ("python",)

    def close(self) -> None:
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- preparing ------------------------------------------------------------------------

    def prepare(self, code: str, language: str) -> PreparedProgram:
        if language not in self.languages:
            needs = " (it needs a C++ compiler, g++, which this machine lacks)" if language == "cpp" else ""
            raise ValueError(f"unsupported language {language!r}{needs}; supported here: {', '.join(self.languages)}")
        try:
            host_dir = tempfile.mkdtemp(dir=self.base_dir)
        except FileNotFoundError:
            raise SandboxUnavailable(
                f"the code sandbox's work folder {self.base_dir} vanished (deleted by a /tmp cleaner such as "
                "systemd-tmpfiles or tmpreaper?); no program can be prepared. Point work_root at a folder "
                "that is not cleaned, or restart the worker"
            ) from None
        if language == "python":
            path = os.path.join(host_dir, "main.py")
            _write(path, code, 0o644)
            return PreparedProgram(
                language, host_dir, [self.python, *self.python_flags, "/tmp/main.py"], [(path, "/tmp/main.py")]
            )
        if language == "cpp":
            _write(os.path.join(host_dir, "main.cpp"), code, 0o644)
            build = "/tmp/build"
            compile_argv = [self.cxx, *self.cxx_flags, "-o", f"{build}/main", f"{build}/main.cpp"]
            uid = iso.throwaway_uid()
            if uid is not None:  # the compiler runs as a throwaway user that must write the binary
                os.chown(host_dir, uid, uid)
            result = self._execute(compile_argv, b"", COMPILE_LIMITS, files=[], writable=[(host_dir, build)], uid=uid)
            if result.status is Status.OK:
                binary = os.path.join(host_dir, "main")
                return PreparedProgram(language, host_dir, ["/tmp/main"], [(binary, "/tmp/main")], result)
            status = Status.COMPILE_ERROR if result.status is not Status.SANDBOX_ERROR else Status.SANDBOX_ERROR
            detail = f"compilation failed ({result.status.value}: {result.detail})"
            failed = replace(result, status=status, detail=detail)
            return PreparedProgram(language, host_dir, [], [], failed)
        raise AssertionError(f"language {language!r} is listed but not prepared")  # cannot happen

    def release(self, program: PreparedProgram) -> None:
        shutil.rmtree(program.host_dir, ignore_errors=True)

    # -- running --------------------------------------------------------------------------

    def run(self, program: PreparedProgram, stdin: str, limits: Limits) -> RunResult:
        if program.compile_result is not None and program.compile_result.status is not Status.OK:
            return program.compile_result
        return self._execute(program.argv, stdin.encode(), limits, files=program.files, writable=[], uid=iso.throwaway_uid())

    def _execute(self, argv, stdin_bytes, limits, *, files, writable, uid) -> RunResult:
        started = time.monotonic()
        try:
            mounts = iso.mount_plan(
                files=files,
                writable_dirs=writable,
                scratch_bytes=limits.scratch_mb * iso.MIB,
                tool_paths=self.tool_paths,
                hidden_dirs=[self.base_dir],
            )
            inner = iso.inner_command(argv, limits, uid)
            cgroup = RunCgroup.create(self.cgroups, limits) if self.cgroups is not None else None
        except OSError as exc:  # a tool or the cgroup hierarchy went missing since start-up
            return _sandbox_error(self.isolation, f"could not set up the sandbox: {exc}", time.monotonic() - started)
        try:
            plan = iso.init_plan(mounts, limits, cgroup=cgroup, seccomp_hex=self.seccomp_hex, pivot_root_nr=self.pivot_root_nr)
            if self.isolation == "bwrap":
                as_root = iso.running_as_root()
                build = lambda fd: iso.bwrap_command(mounts, plan, inner, status_fd=fd, as_root=as_root)  # noqa: E731
            else:
                build = lambda fd: iso.unshare_command(plan, inner, status_fd=fd)  # noqa: E731
            return _spawn_and_collect(build, stdin_bytes, limits, self.isolation, cgroup)
        finally:
            if cgroup is not None:
                cgroup.close()


def _prefix_of(executable: str) -> str:
    """/root/.pyenv/versions/3.11.7/bin/python3.11 -> /root/.pyenv/versions/3.11.7"""
    return os.path.dirname(os.path.dirname(os.path.realpath(executable)))


def _interpreter_paths(executable: str) -> list[str]:
    """What a Python interpreter needs of its installation: its binary and its lib folders (the
    standard library, libpython), not the rest of the prefix (a conda root's other environments
    and package cache, scripts)."""
    real, prefix = os.path.realpath(executable), _prefix_of(executable)
    libs = [os.path.join(prefix, name) for name in ("lib", "lib64")]
    return [real] + [lib for lib in libs if os.path.isdir(lib) and not os.path.islink(lib)]


def _write(path: str, text: str, mode: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)


def _spawn_and_collect(build_command, stdin_bytes: bytes, limits: Limits, isolation: str, cgroup: RunCgroup | None) -> RunResult:
    """Run `build_command(status_fd)` and turn what happened into a RunResult.

    The sandbox's init reports on `status_fd` ("ready" once set up, then the program's exact
    wait status and CPU time, or the limit it ended the run at), which separates "the sandbox
    failed" from "the program failed" without trusting anything the program prints.
    """
    status_read, status_write = os.pipe()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            build_command(status_write),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(iso.CLEAN_ENV),
            cwd="/",
            pass_fds=(status_write, *(cgroup.fds if cgroup is not None else ())),
            start_new_session=True,  # its own process group, killed as a whole at the end
        )
    except OSError as exc:
        os.close(status_read)
        return _sandbox_error(isolation, f"could not start the sandbox: {exc}", time.monotonic() - started)
    finally:
        os.close(status_write)  # the sandbox holds its own copy now
    try:
        out, err, err_total, stop_reason = _communicate(proc, stdin_bytes, started + limits.wall_limit_s, limits)
    finally:
        # Killing the wrapper kills the sandbox's init (parent-death signal), and with it, by
        # the kernel's pid-namespace rule, every process the program started.
        _kill_group(proc.pid)
        try:
            _, wrapper_status, wrapper_usage = os.wait4(proc.pid, 0)
            wrapper_cpu = wrapper_usage.ru_utime + wrapper_usage.ru_stime
        except ChildProcessError:  # something else in this process reaped it (a waitpid(-1) elsewhere)
            wrapper_status, wrapper_cpu = signal.SIGKILL, 0.0  # unknown; the init's report still counts
        proc.returncode = os.waitstatus_to_exitcode(wrapper_status)  # so Popen never waits for it again
        wall = time.monotonic() - started  # the run's time, not the clean-up's below
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        report = _read_available(status_read).split("\n")
        os.close(status_read)
        oom_kills = 0
        if cgroup is not None and cgroup.kill_and_wait():  # everything it started has ended
            wrapper_cpu, oom_kills = cgroup.cpu_seconds(), cgroup.oom_kills()
    exit_line = next((line.split() for line in report if line.startswith("exit ")), None)
    limit_line = next((line.split() for line in report if line.startswith("limit ")), None)
    error_line = next((line for line in report if line.startswith("error ")), None)
    if exit_line is not None:  # the program ended on its own: its exact status and CPU time
        wait_status, cpu = int(exit_line[1]), float(exit_line[2])
    else:  # we or the init killed it (or the sandbox broke)
        wait_status, cpu = wrapper_status, float(limit_line[-1]) if limit_line else wrapper_cpu
    if cgroup is not None:  # the exact total, including what ran after the init's report
        cpu = max(cpu, wrapper_cpu)
    if stop_reason != "output" and limit_line is not None:  # the init ended the run at a limit
        stop_reason = "wall" if limit_line[1] == "wall" else f"{limit_line[1]}-limit"  # or cpu-/memory-limit
    elif stop_reason != "output" and oom_kills:
        stop_reason = "memory-limit"
    exit_code, sig = _exit_of(wait_status)
    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    common = dict(
        exit_code=exit_code,
        signal=sig,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=stop_reason == "output",
        stderr_truncated=err_total > len(err),
        wall_time_s=wall,
        cpu_time_s=cpu,
        isolation=isolation,
    )
    if error_line is not None or (stop_reason is None and exit_line is None):
        why = "did not start" if "ready" not in report else "ended without reporting the program's exit"
        why = error_line or why
        detail = f"the sandbox {why}: {' '.join(report).strip()!r} {stderr[-500:]}"
        return RunResult(Status.SANDBOX_ERROR, **common, detail=detail)
    status, detail = _classify(exit_code, sig, cpu, wall, stop_reason, stderr, limits)
    return RunResult(status, **common, detail=detail)


def _communicate(proc, stdin_bytes: bytes, deadline: float, limits: Limits):
    """Feed stdin, collect stdout/stderr (bounded), and return when the process is gone.

    Returns (stdout, stderr kept, stderr byte count, stop reason) where the stop reason is
    None (exited), "wall" (deadline passed) or "output" (too much output).
    """
    out, err = bytearray(), bytearray()
    total, err_total = 0, 0
    sel = selectors.DefaultSelector()
    try:
        pidfd = os.pidfd_open(proc.pid)  # readable once the process has exited
        sel.register(pidfd, selectors.EVENT_READ, "exit")
    except (AttributeError, OSError):  # Linux < 5.3: poll for the exit instead
        pidfd = None
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    stdin_view = memoryview(stdin_bytes)
    if stdin_bytes:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
    else:
        proc.stdin.close()
    exited_at = None
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return out, err, err_total, "wall"
            readers = [k for k in sel.get_map().values() if k.data in ("stdout", "stderr")]
            if exited_at is not None and (not readers or now >= exited_at + DRAIN_GRACE_S):
                return out, err, err_total, None
            wait = deadline - now if exited_at is None else min(deadline, exited_at + DRAIN_GRACE_S) - now
            if pidfd is None and exited_at is None:
                if _has_exited(proc.pid):
                    exited_at = now
                wait = min(wait, EXIT_POLL_S)
            for key, _ in sel.select(max(wait, 0.0)):
                if key.data == "exit":
                    exited_at = time.monotonic()
                    sel.unregister(pidfd)
                elif key.data == "stdin":
                    try:
                        written = os.write(key.fd, stdin_view[:PIPE_CHUNK])
                        stdin_view = stdin_view[written:]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        stdin_view = stdin_view[:0]  # the program closed its input: stop feeding
                    if not stdin_view:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                else:
                    chunk = os.read(key.fd, PIPE_CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    total += len(chunk)
                    if key.data == "stdout":
                        out += chunk
                    else:
                        err_total += len(chunk)
                        err += chunk[: max(0, limits.stderr_keep_bytes - len(err))]
                    if total > limits.max_output_bytes:
                        del out[limits.max_output_bytes :]
                        return out, err, err_total, "output"
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)


def _has_exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (wait4 later still gets its status)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped by someone else: certainly gone
        return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_available(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, PIPE_CHUNK):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", errors="replace")


def _exit_of(wait_status: int) -> tuple[int, int | None]:
    """(exit code as a shell shows it, killing signal or None)."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return 128 + sig, sig
    return os.WEXITSTATUS(wait_status), None


def _classify(exit_code, sig, cpu, wall, stop_reason, stderr, limits: Limits) -> tuple[Status, str]:
    if stop_reason == "output":
        return Status.OUTPUT_LIMIT, f"printed more than {limits.max_output_bytes} bytes"
    if stop_reason == "memory-limit":
        return Status.MEMORY_LIMIT, f"the run's memory reached its limit of {limits.memory_mb} MB"
    if stop_reason == "cpu-limit":
        return Status.TIMEOUT, f"its processes used {cpu:.2f} s of CPU time, limit {limits.time_limit_s:g} s"
    if stop_reason == "wall":
        return Status.TIMEOUT, f"killed at the wall-time limit of {limits.wall_limit_s:.1f} s"
    # The backstop RLIMIT_CPU kills with SIGKILL a second past the limit, by the kernel's
    # tick-based clock, which runs ahead of the exact total we see (by up to a quarter).
    killed_by_cpu_limit = sig == signal.SIGKILL and cpu >= 0.75 * limits.time_limit_s
    if cpu > limits.time_limit_s or sig == signal.SIGXCPU or killed_by_cpu_limit:
        return Status.TIMEOUT, f"used {cpu:.2f} s of CPU time, limit {limits.time_limit_s:g} s"
    if exit_code == 0:
        return Status.OK, ""
    if any(marker in stderr for marker in MEMORY_ERROR_MARKERS):
        return Status.MEMORY_LIMIT, f"ran out of memory (limit {limits.memory_mb} MB)"
    if sig == signal.SIGXFSZ:
        return Status.RUNTIME_ERROR, f"wrote a file over {limits.max_file_mb} MB"
    if sig is not None:
        return Status.RUNTIME_ERROR, f"killed by signal {signal.strsignal(sig) or sig}"
    return Status.RUNTIME_ERROR, f"exit code {exit_code}"


def _sandbox_error(isolation: str, detail: str, wall: float) -> RunResult:
    return RunResult(Status.SANDBOX_ERROR, None, None, "", "", False, False, wall, 0.0, isolation, detail)
