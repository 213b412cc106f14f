"""The sandbox front door: pick the isolation, bound concurrency, run programs.

`Sandbox("auto")` uses bubblewrap when it works here, else (as root) the unshare fallback, and
refuses to run code at all when neither does: model-written programs never run unsandboxed. The
chosen isolation is checked with a probe program and written to the log as a WARNING, once per
process, with how runs are bounded (cgroups, or the weaker sampling without them), so a run's
log always says how its programs were contained.

A sandbox that breaks later (bwrap uninstalled, its work folder deleted, a SandboxFusion server
gone) raises SandboxUnavailable: a run that fails twice is followed by the probe program, and
if that fails too the sandbox is gone, and scoring on would give every program 0 and train on
that. (If the probe passes, only that one run is reported as sandbox_error.)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from verl_avsd.sandbox import isolation as iso
from verl_avsd.sandbox.fusion import SandboxFusionBackend
from verl_avsd.sandbox.local import LocalBackend
from verl_avsd.sandbox.result import Limits, RunResult, SandboxUnavailable, Status
from verl_avsd.sandbox.seccomp import UnsupportedArchitecture

logger = logging.getLogger(__name__)

ISOLATIONS = ("auto", "bwrap", "unshare", "sandbox_fusion")
DEFAULT_LIMITS = Limits()
ISOLATION_ENV = "VERL_AVSD_SANDBOX_ISOLATION"  # overrides "auto", e.g. to force the fallback
PROBE_CODE = "import sys; print(sum(range(10)), sys.version_info[0])"
PROBE_OUTPUT = "45 3"
HOW_TO_ISOLATE = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; conda: conda install -c conda-forge "
    "bubblewrap; `make install` does it where it runs as root), or run as root for the unshare fallback, "
    "or set sandbox_fusion_url to a SandboxFusion server"
)
DESCRIPTIONS = {
    "bwrap": (
        "bubblewrap: allow-listed read-only root, private /tmp, no network, own pid namespace, throwaway user when root, rlimits"
    ),
    "unshare": (
        "FALLBACK unshare: allow-listed read-only root built by pivot_root, mount/net/pid/ipc/uts namespaces, "
        "private /tmp, throwaway user, rlimits (bubblewrap is the stronger default: apt-get install bubblewrap)"
    ),
    "sandbox_fusion": "remote SandboxFusion server (its own isolation)",
}

_announced: set[str] = set()
_announce_lock = threading.Lock()


class Sandbox:
    """Runs untrusted programs with limits; thread-safe; at most `max_concurrent` at a time."""

    def __init__(
        self,
        isolation: str = "auto",
        *,
        max_concurrent: int | None = None,
        sandbox_fusion_url: str | None = None,
        python_executable: str | None = None,
        work_root: str | None = None,
        cgroups: bool | None = None,
    ):
        if isolation not in ISOLATIONS:
            raise ValueError(f"sandbox isolation must be one of {ISOLATIONS}, got {isolation!r}")
        if isolation == "auto":
            isolation = os.environ.get(ISOLATION_ENV) or ("sandbox_fusion" if sandbox_fusion_url else "auto")
            if isolation not in ISOLATIONS:
                raise ValueError(f"{ISOLATION_ENV}={isolation!r} is not one of {ISOLATIONS}")
        self.max_concurrent = max_concurrent or os.cpu_count() or 1
        self._slots = threading.BoundedSemaphore(self.max_concurrent)
        local_options = dict(python_executable=python_executable, work_root=work_root, cgroups=cgroups)
        if isolation == "sandbox_fusion":
            if not sandbox_fusion_url:
                raise ValueError("isolation 'sandbox_fusion' needs sandbox_fusion_url")
            self.backend = SandboxFusionBackend(sandbox_fusion_url)
        elif isolation == "auto":
            self.backend = _first_working_local_backend(local_options)
        else:
            self.backend = _probed_local_backend(isolation, local_options)
        self.isolation = self.backend.isolation
        _announce(self.isolation, getattr(self.backend, "limits_description", ""))

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.backend.languages)

    def close(self) -> None:
        self.backend.close()

    def run(self, code: str, stdin: str = "", *, language: str = "python", time_limit_s: float = 2.0,
            memory_mb: int = 256, **limit_overrides) -> RunResult:  # fmt: skip
        """Run `code` once on `stdin`. `limit_overrides` are `Limits` fields (wall_time_limit_s, ...)."""
        limits = Limits(time_limit_s=time_limit_s, memory_mb=memory_mb, **limit_overrides)
        return self.run_tests(code, [stdin], language=language, limits=limits)[0]

    def run_tests(
        self,
        code: str,
        stdins: Sequence[str],
        *,
        language: str = "python",
        limits: Limits = DEFAULT_LIMITS,
        keep_going: Callable[[int, RunResult], bool] | None = None,
    ) -> list[RunResult]:
        """Run one program on several inputs, in order, compiling it once.

        A program that does not compile gets its compile result for every input. With
        `keep_going`, called on each result in order, the runs stop after the first result for
        which it returns False, or after a compile error (the list is then shorter).
        """
        with self._slots:
            program = self.backend.prepare(code, language)
        try:
            results = []
            for index, stdin in enumerate(stdins):
                result = self._run_checked(program, stdin, limits)
                results.append(result)
                go_on = keep_going is None or keep_going(index, result)
                if result.status is Status.COMPILE_ERROR:  # no binary: nothing else can run
                    return results if keep_going is not None else [result] * len(stdins)
                if not go_on:
                    break
            return results
        finally:
            self.backend.release(program)

    def _run_checked(self, program, stdin: str, limits: Limits) -> RunResult:
        """One run. A sandbox failure is retried once; if it fails again and the probe program
        fails too, the sandbox is broken and everything stops (SandboxUnavailable)."""
        for _ in range(2):
            with self._slots:
                result = self.backend.run(program, stdin, limits)
            if result.status is not Status.SANDBOX_ERROR:
                return result
            logger.warning("code sandbox (%s) failed on a run: %s", self.isolation, result.detail[:500])
        probe = _probe(self.backend)
        if probe.status is Status.OK and probe.stdout.strip() == PROBE_OUTPUT:
            logger.error("code sandbox (%s) works but failed twice on one program: %s", self.isolation, result.detail)
            return result
        raise SandboxUnavailable(
            f"the code sandbox ({self.isolation}) failed twice on one run: {result.detail[:500]}; and its probe "
            f"program failed too ({probe.status.value}: {probe.detail[:300]}); stopping rather than scoring "
            "programs without it"
        )

    def run_many(self, programs: Sequence[tuple[str, str]], *, language: str = "python",
                 limits: Limits = DEFAULT_LIMITS) -> list[RunResult]:  # fmt: skip
        """Run many (code, stdin) pairs concurrently (bounded by max_concurrent); results in order."""
        with ThreadPoolExecutor(max_workers=self.max_concurrent) as pool:
            futures = [pool.submit(self.run_tests, code, [stdin], language=language, limits=limits) for code, stdin in programs]
            return [future.result()[0] for future in futures]


def _probed_local_backend(isolation: str, options: dict) -> LocalBackend:
    """A local backend whose isolation just ran a probe program correctly, or SandboxUnavailable."""
    try:
        backend = LocalBackend(isolation, **options)
    except (OSError, ValueError, UnsupportedArchitecture) as exc:
        raise SandboxUnavailable(f"the {isolation} isolation cannot be used here: {exc}; {HOW_TO_ISOLATE}") from exc
    result = _probe(backend)
    if result.status is not Status.OK or result.stdout.strip() != PROBE_OUTPUT:
        backend.close()
        raise SandboxUnavailable(
            f"the {isolation} isolation failed its probe run ({result.status.value}: {result.detail}; "
            f"stderr: {result.stderr.strip()[-400:]!r}); {HOW_TO_ISOLATE}"
        )
    return backend


def _probe(backend) -> RunResult:
    """Run the probe program (PROBE_CODE, which prints PROBE_OUTPUT) on `backend`."""
    try:
        program = backend.prepare(PROBE_CODE, "python")
    except SandboxUnavailable as exc:  # e.g. its work folder vanished
        return RunResult(Status.SANDBOX_ERROR, None, None, "", "", False, False, 0.0, 0.0, backend.isolation, str(exc))
    try:
        return backend.run(program, "", Limits(time_limit_s=10.0, memory_mb=256))
    finally:
        backend.release(program)


def _first_working_local_backend(options: dict) -> LocalBackend:
    failures = []
    for isolation in iso.LOCAL_ISOLATIONS:
        if isolation == "unshare" and not iso.running_as_root():
            failures.append("unshare: needs root")
            continue
        try:
            return _probed_local_backend(isolation, options)
        except SandboxUnavailable as exc:
            failures.append(f"{isolation}: {str(exc).split('; ')[0]}")
    raise SandboxUnavailable(f"no code sandbox works on this machine ({' | '.join(failures)}); {HOW_TO_ISOLATE}")


def working_isolations() -> dict[str, str]:
    """Each local isolation -> "ok" when a probe program runs correctly under it here, else why not."""
    report = {}
    for isolation in iso.LOCAL_ISOLATIONS:
        try:
            _probed_local_backend(isolation, {}).close()
            report[isolation] = "ok"
        except SandboxUnavailable as exc:
            report[isolation] = str(exc)
    return report


def _announce(isolation: str, limits: str) -> None:
    with _announce_lock:
        if isolation in _announced:
            return
        _announced.add(isolation)
    bounded = f"; runs bounded by {limits}" if limits else ""
    logger.warning("verl_avsd code sandbox isolation: %s -- %s%s", isolation, DESCRIPTIONS[isolation], bounded)


_shared: dict[tuple, Sandbox] = {}
_shared_lock = threading.Lock()


def get_sandbox(isolation: str = "auto", *, max_concurrent: int | None = None, sandbox_fusion_url: str | None = None) -> Sandbox:
    """One shared Sandbox per process and setting (the probe and the log line happen once)."""
    key = (isolation, max_concurrent, sandbox_fusion_url)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Sandbox(isolation, max_concurrent=max_concurrent, sandbox_fusion_url=sandbox_fusion_url)
        return _shared[key]


def run(code: str, stdin: str = "", *, language: str = "python", time_limit_s: float = 2.0, memory_mb: int = 256,
        isolation: str = "auto", **limit_overrides) -> RunResult:  # fmt: skip
    """Run `code` once in the shared sandbox. See `Sandbox.run`."""
    return get_sandbox(isolation).run(
        code, stdin, language=language, time_limit_s=time_limit_s, memory_mb=memory_mb, **limit_overrides
    )
