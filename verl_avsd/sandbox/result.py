"""What a sandboxed run is asked to respect (`Limits`) and what it reports (`RunResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

MIB = 1024 * 1024


class SandboxUnavailable(RuntimeError):
    """No isolation that this project trusts works (or it stopped working): code is never run
    without one, and a run whose programs cannot be judged stops rather than score them 0."""


class Status(str, Enum):
    """How a run ended. The judge adds `wrong_answer` on top of `ok` by comparing outputs."""

    OK = "ok"  # exited with code 0 within every limit
    RUNTIME_ERROR = "runtime_error"  # non-zero exit code or killed by a signal
    COMPILE_ERROR = "compile_error"  # the compiler rejected the program (C++ only)
    TIMEOUT = "timeout"  # CPU time over the limit, or wall time over the wall limit
    MEMORY_LIMIT = "memory_limit"  # the run's memory reached its limit (OOM-killed, MemoryError, bad_alloc)
    OUTPUT_LIMIT = "output_limit"  # printed more than `max_output_bytes` (stdout + stderr)
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed; says nothing about the program


@dataclass(frozen=True)
class Limits:
    """Per-run limits. `time_limit_s` is CPU time (what contest limits mean); the wall clock
    gets `wall_time_limit_s`, by default twice the CPU limit plus a second for interpreter
    start-up and a busy machine, so that a program sleeping or blocked on input still ends."""

    time_limit_s: float = 2.0
    memory_mb: int = 256  # memory of the whole run: every process, its /tmp files (cgroup memory.max)
    wall_time_limit_s: float | None = None
    max_processes: int = 32  # processes + threads of the run (cgroup pids.max and RLIMIT_NPROC)
    max_file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    max_open_files: int = 64
    stack_mb: int = 64  # main stack; also each thread's reserved (not used) stack size
    scratch_mb: int = 64  # size of the private writable /tmp (a tmpfs, counted as memory)
    max_output_bytes: int = 8 * MIB  # stdout + stderr; more is killed as OUTPUT_LIMIT
    stderr_keep_bytes: int = 64 * 1024  # stderr kept in the result (the rest only counted)

    def __post_init__(self):
        if not (self.time_limit_s > 0 and math.isfinite(self.time_limit_s)):
            raise ValueError(f"time_limit_s must be a positive number of seconds, got {self.time_limit_s!r}")
        if self.memory_mb < 16:
            raise ValueError(f"memory_mb must be at least 16 (an interpreter needs that to start), got {self.memory_mb!r}")
        if self.wall_time_limit_s is not None and not self.wall_time_limit_s > 0:
            raise ValueError(f"wall_time_limit_s must be positive, got {self.wall_time_limit_s!r}")
        for name in ("max_processes", "max_file_mb", "max_open_files", "stack_mb", "scratch_mb", "max_output_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")

    @property
    def wall_limit_s(self) -> float:
        if self.wall_time_limit_s is not None:
            return self.wall_time_limit_s
        return 2.0 * self.time_limit_s + 1.0

    def with_overrides(self, **overrides) -> Limits:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# Compiling is trusted-tool work on untrusted input: generous limits, still bounded.
COMPILE_LIMITS = Limits(time_limit_s=20.0, memory_mb=2048, max_processes=64, max_file_mb=256, stack_mb=64)


@dataclass(frozen=True)
class RunResult:
    status: Status
    exit_code: int | None  # None when the process never started or we could not collect it
    signal: int | None  # the signal that killed the program, if any
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_time_s: float
    cpu_time_s: float  # user + system time of everything the run started
    isolation: str  # which isolation ran it: bwrap, unshare or sandbox_fusion
    detail: str = ""  # why the status was chosen, in words (e.g. "killed at the wall limit of 3.0 s")

    @property
    def ok(self) -> bool:
        return self.status is Status.OK
