"""Outcome rewards for math and code rows, as one verl custom reward function.

verl (0.9.1) calls `compute_score(data_source=..., solution_str=..., ground_truth=...,
extra_info=...)` once per rollout, from worker threads; it is routed by `data_source`:

- `math/...`: math-verify equivalence of the response's final answer (its last \\boxed{...},
  else its last expression) with `ground_truth`, so 0.5, \\frac{1}{2}, 1/2 and \\dfrac12 agree.
- `code/...` (and verl's code sources: codecontests, apps, codeforces, taco): the program in the
  response's last fenced code block runs in the sandbox on the hidden tests of `ground_truth`
  (JSON `{"inputs": [...], "outputs": [...]}`), with the row's `extra_info.time_limit_s` and
  `memory_mb`; the score is the share of tests passed, or 1/0 with `code_reward=all_or_nothing`.
  verl's own code scorer is never used: it runs programs unsandboxed. A sandbox that is missing
  or broke raises SandboxUnavailable (naming the row): the run stops rather than train on 0s.
- anything else: verl's `default_compute_score`.

Every call returns the same keys, which verl logs per sample: `score` (the reward), `acc` (1.0
when fully correct), `pass_rate` (share of tests passed; equal to acc for math) and `status`
(`correct`/`wrong`/`no_answer`/`timeout` for math; `ok`, `no_program`, `wrong_answer`,
`compile_error`, `runtime_error`, `timeout`, `memory_limit`, ... for code: the first failing test).

Use it with:
    reward.custom_reward_function.path=pkg://verl_avsd.rewards
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.code_reward=all_or_nothing   # default: fraction
    +reward.custom_reward_function.reward_kwargs.sandbox_isolation=auto        # bwrap | unshare | sandbox_fusion
    +reward.custom_reward_function.reward_kwargs.sandbox_fusion_url=http://host:8080/run_code
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from verl_avsd.data_prep.errors import row_name
from verl_avsd.sandbox import Sandbox, SandboxUnavailable, get_sandbox
from verl_avsd.sandbox.judge import MalformedTests, extract_program, judge, limits_of_row, parse_tests

REWARD_KEYS = ("score", "acc", "pass_rate", "status")
CODE_REWARD_MODES = ("fraction", "all_or_nothing")
VERL_CODE_SOURCES = ("codecontests", "apps", "codeforces", "taco")
MATH_TIMEOUT_S = 30.0  # per answer, including a worker's first start (imports sympy)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    code_reward: str = "fraction",
    sandbox_isolation: str = "auto",
    sandbox_fusion_url: str | None = None,
    max_concurrent: int | None = None,
    **_verl_kwargs,  # verl may pass e.g. reward_router_address; none of it applies here
) -> dict:
    """verl custom reward function; see the module docstring."""
    if data_source.startswith("math/"):
        return math_score(solution_str, ground_truth)
    if data_source.startswith("code/") or data_source in VERL_CODE_SOURCES:
        if code_reward not in CODE_REWARD_MODES:
            raise ValueError(f"reward_kwargs.code_reward must be one of {CODE_REWARD_MODES}, got {code_reward!r}")
        sandbox = get_sandbox(sandbox_isolation, max_concurrent=max_concurrent, sandbox_fusion_url=sandbox_fusion_url)
        return code_score(
            solution_str,
            ground_truth,
            extra_info,
            all_or_nothing=code_reward == "all_or_nothing",
            sandbox=sandbox,
            data_source=data_source,
        )
    from verl.utils.reward_score import default_compute_score

    return _with_reward_keys(default_compute_score(data_source, solution_str, ground_truth, extra_info))


# -- math ----------------------------------------------------------------------------------


def math_score(solution_str: str, ground_truth: str, *, timeout_s: float = MATH_TIMEOUT_S) -> dict:
    """1.0 when the response's final answer is mathematically equal to `ground_truth`.

    math-verify bounds its own parsing and comparison with signal.alarm, which only works in a
    main thread, and verl calls rewards from worker threads; so the check runs in a small pool
    of processes, and a check that still hangs is abandoned (its process replaced).
    """
    for attempt in range(2):
        future = _math_pool().submit(_verify_math, str(ground_truth), solution_str)
        try:
            correct, found_answer = future.result(timeout=timeout_s)
            break
        except FutureTimeout:
            _replace_math_pool()
            return _score(0.0, "timeout")
        except BrokenProcessPool:  # a worker died (killed from outside): one fresh pool, once
            _replace_math_pool()
            if attempt == 1:
                raise
    if not found_answer:
        return _score(0.0, "no_answer")
    return _score(1.0, "correct") if correct else _score(0.0, "wrong")


def _verify_math(ground_truth: str, response: str) -> tuple[bool, bool]:
    """(answer equals ground truth, an answer was found); runs in a pool process."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    gold_text = ground_truth if "\\boxed" in ground_truth else "\\boxed{" + ground_truth + "}"
    try:
        gold = parse(gold_text, (LatexExtractionConfig(), ExprExtractionConfig()))
        # boxed_match_priority=0: a \boxed{} answer wins over any other expression in the text.
        answer = parse(response, (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()))
        if not answer:
            return False, False
        return bool(gold) and verify(gold, answer), True
    except TimeoutException:
        return False, True


_math_pool_lock = threading.Lock()
_math_executor: ProcessPoolExecutor | None = None


def _math_pool() -> ProcessPoolExecutor:
    global _math_executor
    with _math_pool_lock:
        if _math_executor is None:
            _math_executor = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
        return _math_executor


def _replace_math_pool() -> None:
    global _math_executor
    with _math_pool_lock:
        stuck, _math_executor = _math_executor, None
    if stuck is not None:
        for process in list(getattr(stuck, "_processes", {}).values()):
            process.kill()
        stuck.shutdown(wait=False, cancel_futures=True)


# -- code ----------------------------------------------------------------------------------


def code_score(
    solution_str: str,
    ground_truth: str | dict,
    extra_info: dict | None = None,
    *,
    all_or_nothing: bool = False,
    sandbox: Sandbox | None = None,
    data_source: str = "code",
) -> dict:
    """Share of hidden tests the response's program passes (1/0 with `all_or_nothing`).

    Raises MalformedTests (naming the row and field) when the row's tests or limits are bad, and
    SandboxUnavailable (naming the row) when the sandbox cannot judge the program.
    """
    extra_info = extra_info or {}
    row = row_name(extra_info, data_source=data_source)
    tests = parse_tests(ground_truth, where=f"{row}: field reward_model.ground_truth")
    if not len(tests):
        raise MalformedTests(f"{row}: field reward_model.ground_truth: has no tests, so no reward can be computed")
    limits = limits_of_row(extra_info.get("time_limit_s"), extra_info.get("memory_mb"), where=row)
    program = extract_program(solution_str, default_language=extra_info.get("language") or "python")
    if program is None:
        return _score(0.0, "no_program", pass_rate=0.0)
    try:
        report = judge(program, tests, sandbox=sandbox or get_sandbox(), limits=limits, stop_on_first_failure=all_or_nothing)
    except SandboxUnavailable as exc:
        raise SandboxUnavailable(f"{row}: cannot score this response: {exc}") from exc
    acc = 1.0 if report.all_passed else 0.0
    return _score(acc if all_or_nothing else report.pass_rate, report.status, acc=acc, pass_rate=report.pass_rate)


# -- shared --------------------------------------------------------------------------------


def _score(score: float, status: str, *, acc: float | None = None, pass_rate: float | None = None) -> dict:
    return {
        "score": float(score),
        "acc": float(score if acc is None else acc),
        "pass_rate": float(score if pass_rate is None else pass_rate),
        "status": status,
    }


def _with_reward_keys(result) -> dict:
    """verl's scorers return a float or a dict; give every row the same keys (verl stacks them)."""
    if isinstance(result, dict):
        score = float(result["score"])
        return {**_score(score, "ok"), **{k: result[k] for k in ("acc", "pass_rate") if k in result}}
    return _score(float(result), "ok")
