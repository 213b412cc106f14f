"""Sandboxed execution of model-written programs (Python; C++ where g++ is installed).

    from verl_avsd.sandbox import run, Sandbox, Limits
    result = run("print(input()[::-1])", "abc\n", time_limit_s=1, memory_mb=256)
    result.status, result.stdout   # Status.OK, "cba\n"

Modules, in reading order: `result` (Limits, RunResult, Status), `isolation` (what a sandboxed
program can see: an allow-listed root, namespaces, its user), `seccomp` (the system calls it may
not make), `cgroup` (bounding a run's memory, processes and CPU time as a whole), `_sandbox_init`
(pid 1 inside every sandbox: builds the root, starts and watches the program), `local` (running
it here under bwrap or unshare), `fusion` (running it on a SandboxFusion server), `runner`
(choosing the isolation, bounding concurrency, stopping when the sandbox breaks), `judge`
(finding the program in a response and checking it against tests).
"""

from verl_avsd.sandbox.result import Limits, RunResult, Status
from verl_avsd.sandbox.runner import ISOLATION_ENV, Sandbox, SandboxUnavailable, get_sandbox, run

__all__ = ["ISOLATION_ENV", "Limits", "RunResult", "Sandbox", "SandboxUnavailable", "Status", "get_sandbox", "run"]
