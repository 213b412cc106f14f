"""Running programs on a SandboxFusion server (https://github.com/bytedance/SandboxFusion), for clusters.

The HTTP call is verl's own (`verl.utils.reward_score.sandbox_fusion.utils.call_sandbox_api`,
with its retries on gateway timeouts); this module only maps the server's answer onto a
`RunResult`. The server does its own isolation; every request carries the code, so nothing is
prepared locally and a C++ program is compiled by the server on each run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from verl_avsd.sandbox.result import Limits, RunResult, Status

MEMORY_ERROR_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory")
COMPILE_TIMEOUT_S = 20


@dataclass
class RemoteProgram:
    language: str
    code: str


class SandboxFusionBackend:
    isolation = "sandbox_fusion"
    languages = ("python", "cpp")

    def __init__(self, url: str):
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"sandbox_fusion_url must be an http(s) URL of the server's /run_code endpoint, got {url!r}")
        self.url = url

    def prepare(self, code: str, language: str) -> RemoteProgram:
        if language not in self.languages:
            raise ValueError(f"unsupported language {language!r} (supported: {', '.join(self.languages)})")
        return RemoteProgram(language, code)

    def release(self, program: RemoteProgram) -> None:
        pass

    def close(self) -> None:
        pass

    def run(self, program: RemoteProgram, stdin: str, limits: Limits) -> RunResult:
        from verl.utils.reward_score.sandbox_fusion.utils import call_sandbox_api

        started = time.monotonic()
        response, error = call_sandbox_api(
            sandbox_fusion_url=self.url,
            code=program.code,
            stdin=stdin,
            compile_timeout=COMPILE_TIMEOUT_S,
            run_timeout=limits.time_limit_s,
            memory_limit_mb=limits.memory_mb,
            language=program.language,
        )
        return result_from_response(response, error, limits, time.monotonic() - started)


def result_from_response(response: dict | None, error: str | None, limits: Limits, wall: float) -> RunResult:
    """Map a SandboxFusion /run_code answer (or verl's error string) onto a RunResult."""

    def result(status, stage: dict | None, detail: str) -> RunResult:
        stage = stage or {}
        stdout, stderr = stage.get("stdout") or "", stage.get("stderr") or ""
        over = len(stdout.encode()) + len(stderr.encode()) > limits.max_output_bytes
        if over and status in (Status.OK, Status.RUNTIME_ERROR):
            status, detail = Status.OUTPUT_LIMIT, f"printed more than {limits.max_output_bytes} bytes"
        seconds = float(stage.get("execution_time") or 0.0)
        return RunResult(
            status=status,
            exit_code=stage.get("return_code"),
            signal=None,
            stdout=stdout[: limits.max_output_bytes],
            stderr=stderr[: limits.stderr_keep_bytes],
            stdout_truncated=len(stdout) > limits.max_output_bytes,
            stderr_truncated=len(stderr) > limits.stderr_keep_bytes,
            wall_time_s=seconds or wall,
            cpu_time_s=seconds,  # the server reports one execution time
            isolation="sandbox_fusion",
            detail=detail,
        )

    if response is None:
        return result(Status.SANDBOX_ERROR, None, f"SandboxFusion request failed: {error}")
    if response.get("status") == "SandboxError":
        return result(Status.SANDBOX_ERROR, None, f"SandboxFusion error: {response.get('message', '')}")
    compiled = response.get("compile_result")
    if compiled and (compiled.get("status") != "Finished" or compiled.get("return_code") not in (0, None)):
        return result(Status.COMPILE_ERROR, compiled, f"compilation {compiled.get('status', 'failed')}")
    ran = response.get("run_result")
    if not ran:
        return result(Status.SANDBOX_ERROR, None, f"SandboxFusion answered without a run result: {response}")
    if ran.get("status") == "TimeLimitExceeded":
        return result(Status.TIMEOUT, ran, f"time limit of {limits.time_limit_s:g} s exceeded")
    if ran.get("status") == "Finished" and ran.get("return_code") == 0:
        return result(Status.OK, ran, "")
    if any(marker in (ran.get("stderr") or "") for marker in MEMORY_ERROR_MARKERS):
        return result(Status.MEMORY_LIMIT, ran, f"ran out of memory (limit {limits.memory_mb} MB)")
    return result(Status.RUNTIME_ERROR, ran, f"{ran.get('status')}, exit code {ran.get('return_code')}")
