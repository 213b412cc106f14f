"""The feedback view says what the student's program did on the public tests, or is absent."""

import json
import shutil
import time

import pytest

from verl_avsd.feedback_view import FEEDBACK_STATUSES, feedback_metrics, run_feedback
from verl_avsd.sandbox import RunResult, SandboxUnavailable, Status, get_sandbox
from verl_avsd.sandbox.judge import MalformedTests

HAS_GXX = shutil.which("g++") is not None
PUBLIC = json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})
READ_TWO = "a, b = map(int, input().split())\n"


def fenced(code: str, tag: str = "python") -> str:
    return f"My program:\n```{tag}\n{code}\n```"


def one(response: str, tests=PUBLIC, **kwargs):
    return run_feedback([response], [tests], **{"time_limit_s": 1.0, **kwargs})[0]


def test_all_public_tests_pass():
    feedback = one(fenced(READ_TWO + "print(a + b)"))
    assert feedback.status == "ok" and feedback.text == "All 2 public tests pass."


def test_wrong_answer_shows_the_first_failing_input_expected_and_actual():
    feedback = one(fenced(READ_TWO + "print(a * b if a > 2 else a + b)"))
    assert feedback.status == "wrong_answer"
    assert feedback.text == "Public test 2 of 2 fails.\nInput:\n3 4\nExpected output:\n7\nActual output:\n12"


def test_crash_shows_the_end_of_the_error_output():
    feedback = one(fenced(READ_TWO + "print(a // 0)"))
    assert feedback.status == "runtime_error"
    assert feedback.text.startswith("Public test 1 of 2: the program crashes (exit code 1).\nInput:\n1 2\nError output:\n")
    assert feedback.text.endswith("ZeroDivisionError: integer division or modulo by zero")


def test_compile_error_shows_the_first_compiler_lines():
    feedback = one(fenced("int main( {", "cpp"))
    if not HAS_GXX:  # a C++ program where no compiler exists gets no view rather than a wrong one
        assert feedback.text is None and feedback.status.startswith("unsupported_language")
        return
    assert feedback.status == "compile_error"
    assert feedback.text.startswith("The program does not compile. Compiler output:\n")
    assert "error" in feedback.text and len(feedback.text.split("\n")) <= 1 + 10 + 1  # 10 lines + "truncated"


def test_limit_notices():
    timeout = one(fenced("while True:\n    pass"), time_limit_s=0.5)
    assert timeout.status == "timeout"
    assert timeout.text == "Public test 1 of 2: the program exceeds the time limit (0.5 s).\nInput:\n1 2"
    memory = one(fenced("x = bytearray(1 << 30)"), memory_mb=128)
    assert memory.text == "Public test 1 of 2: the program exceeds the memory limit (128 MB).\nInput:\n1 2"
    flood = one(fenced("while True:\n    print('y' * 4096)"))
    assert flood.status == "output_limit" and "prints more than" in flood.text


def test_runs_stop_at_the_first_failure():
    # Test 2 would sleep past the limit; it never runs because test 1 already failed.
    code = fenced("import time\na, b = map(int, input().split())\nif a == 3:\n    time.sleep(60)\nprint(0)")
    started = time.monotonic()
    feedback = one(code)
    assert feedback.status == "wrong_answer" and feedback.text.startswith("Public test 1 of 2 fails.")
    assert time.monotonic() - started < 2.5


def test_no_view_without_a_program_or_without_public_tests():
    assert one("I would loop over the pairs and add them.").text is None
    assert one(fenced(READ_TWO + "print(a + b)"), tests=None).status == "no_tests"
    empty = json.dumps({"inputs": [], "outputs": []})
    assert one(fenced(READ_TWO + "print(a + b)"), tests=empty).text is None


def test_a_broken_sandbox_stops_the_run(monkeypatch):
    sandbox = get_sandbox()
    broken = RunResult(Status.SANDBOX_ERROR, None, None, "", "", False, False, 0.0, 0.0, sandbox.isolation, "boom")
    monkeypatch.setattr(sandbox.backend, "run", lambda *args: broken)
    with pytest.raises(SandboxUnavailable, match="failed twice on one run: boom"):
        one(fenced(READ_TWO + "print(a + b)"), sandbox=sandbox)


def test_long_blocks_are_clipped():
    many_lines = "\n".join(str(i) for i in range(1000)) + "\n"
    tests = json.dumps({"inputs": [many_lines], "outputs": [many_lines]})
    feedback = one(fenced("import sys\nprint(sys.stdin.read()[::-1])"), tests=tests)
    assert feedback.status == "wrong_answer"
    assert feedback.text.count("... (truncated)") == 3  # input, expected and actual
    assert len(feedback.text) < 3 * 900


def test_batch_keeps_order_and_per_row_settings():
    responses = [
        fenced(READ_TWO + "print(a + b)"),
        "no program here",
        fenced("x = 0\nfor i in range(3_000_000):\n    x += i\n" + READ_TWO + "print(a + b)"),  # ~0.3 s CPU
        fenced(READ_TWO + "print(a - b)"),
    ]
    tests = [PUBLIC, PUBLIC, PUBLIC, PUBLIC]
    views = [f.text for f in run_feedback(responses, tests, time_limit_s=[1, 1, 0.1, 1], memory_mb=256)]
    assert views[0] == "All 2 public tests pass."
    assert views[1] is None
    assert views[2].startswith("Public test 1 of 2: the program exceeds the time limit (0.1 s).")  # its own limit
    assert views[3].startswith("Public test 1 of 2 fails.")
    metrics = feedback_metrics(run_feedback(responses, tests, time_limit_s=5))
    assert metrics["feedback/ok_rate"] == 0.5 and metrics["feedback/no_program_rate"] == 0.25
    assert metrics["feedback/view_rate"] == 0.75
    assert {f"feedback/{s}_rate" for s in FEEDBACK_STATUSES} <= set(metrics)


def test_untagged_block_uses_the_rows_language():
    cpp = "#include <iostream>\nint main(){int a,b;std::cin>>a>>b;std::cout<<a+b<<std::endl;}"
    feedback = run_feedback(["```\n" + cpp + "\n```"], [PUBLIC], time_limit_s=2, languages=["cpp"])[0]
    assert feedback.status == ("ok" if HAS_GXX else "unsupported_language:cpp")


def test_bad_inputs_are_clear_errors():
    with pytest.raises(MalformedTests, match="batch sample 1: field extra_info.public_tests: 1 inputs but 2 outputs"):
        run_feedback(["x", "y"], [PUBLIC, json.dumps({"inputs": ["1"], "outputs": ["1", "2"]})])
    with pytest.raises(MalformedTests, match="code/apps train row 3: field extra_info.time_limit_s"):
        run_feedback(["x"], [PUBLIC], time_limit_s=[0], row_names=["code/apps train row 3"])
    with pytest.raises(ValueError, match="2 responses but 1 public test sets"):
        run_feedback(["x", "y"], [PUBLIC])
    with pytest.raises(ValueError, match="time_limit_s has 1 entries for 2 responses"):
        run_feedback(["x", "y"], [PUBLIC, PUBLIC], time_limit_s=[1])
