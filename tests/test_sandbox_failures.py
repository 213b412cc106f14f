"""Issue 13: a missing or broken sandbox stops the run with a named error; it never scores every
program 0.0 with sandbox_error and lets training go on."""

import dataclasses
import json
import os
import shutil

import pytest

from verl_avsd.rewards import code_score
from verl_avsd.sandbox import RunResult, Sandbox, SandboxUnavailable, Status, local
from verl_avsd.sandbox import isolation as iso
from verl_avsd.sandbox.runner import working_isolations

WORKING = [name for name, why in working_isolations().items() if why == "ok"]
TESTS = json.dumps({"inputs": ["1\n"], "outputs": ["2\n"]})
RIGHT = "```python\nprint(int(input()) + 1)\n```"


@pytest.fixture(params=WORKING)
def sandbox(request):
    box = Sandbox(request.param, max_concurrent=1)
    yield box
    box.close()


def test_a_vanished_work_folder_is_a_named_error(sandbox):
    base = sandbox.backend.base_dir
    shutil.rmtree(base)  # as a /tmp cleaner would
    with pytest.raises(SandboxUnavailable, match=f"work folder {base} vanished"):
        sandbox.run("print(1)")


def test_a_sandbox_whose_tools_vanish_stops_the_run(sandbox, monkeypatch, tmp_path):
    assert sandbox.run("print(1)").stdout == "1\n"
    monkeypatch.setitem(iso.CLEAN_ENV, "PATH", str(tmp_path))  # bwrap/unshare/setpriv uninstalled
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match=f"code sandbox \\({sandbox.isolation}\\) failed twice.*not installed"):
        sandbox.run("print(1)")
    with pytest.raises(SandboxUnavailable, match="code/x train row 7 \\(problem p7\\): cannot score this response"):
        row = {"split": "train", "index": 7, "problem_id": "p7"}
        code_score(RIGHT, TESTS, row, sandbox=sandbox, data_source="code/x")


def test_one_failed_run_is_retried_before_giving_up(sandbox, monkeypatch):
    real_run, calls = sandbox.backend.run, []
    broken = RunResult(Status.SANDBOX_ERROR, None, None, "", "", False, False, 0.0, 0.0, sandbox.isolation, "hiccup")

    def flaky(*args):
        calls.append(args)
        return broken if len(calls) == 1 else real_run(*args)

    monkeypatch.setattr(sandbox.backend, "run", flaky)
    score = code_score(RIGHT, TESTS, {"index": 0}, sandbox=sandbox)
    assert score["score"] == 1.0 and len(calls) == 2, score
    monkeypatch.setattr(sandbox.backend, "run", lambda *args: broken)
    with pytest.raises(SandboxUnavailable, match="failed twice on one run: hiccup; and its probe program failed"):
        code_score(RIGHT, TESTS, {"index": 0}, sandbox=sandbox)


def test_a_failure_of_one_program_while_the_sandbox_works_is_not_fatal(sandbox, monkeypatch):
    """Only a sandbox that fails its probe stops the run; one program it cannot judge scores 0."""
    real_run = sandbox.backend.run
    broken = RunResult(Status.SANDBOX_ERROR, None, None, "", "", False, False, 0.0, 0.0, sandbox.isolation, "odd")

    def fails_on_odd_programs(program, *args):
        with open(program.files[0][0]) as f:
            return broken if "ODD" in f.read() else real_run(program, *args)

    monkeypatch.setattr(sandbox.backend, "run", fails_on_odd_programs)
    score = code_score("```python\n# ODD\nprint(2)\n```", TESTS, {"index": 0}, sandbox=sandbox)
    assert score == {"score": 0.0, "acc": 0.0, "pass_rate": 0.0, "status": "sandbox_error"}


def test_a_cgroup_hierarchy_that_vanishes_stops_the_run(sandbox, monkeypatch):
    if sandbox.backend.cgroups is None:  # nothing to lose: runs are bounded by sampling
        assert "NO CGROUPS" in sandbox.backend.limits_description
        return
    support = sandbox.backend.cgroups
    gone = {key: os.path.join(base, "vanished") for key, base in support.bases.items()}
    monkeypatch.setattr(sandbox.backend, "cgroups", dataclasses.replace(support, bases=gone))
    with pytest.raises(SandboxUnavailable, match="could not set up the sandbox"):
        sandbox.run("print(1)")


def test_the_inits_own_clock_gives_a_wall_timeout_not_a_sandbox_error(sandbox, monkeypatch):
    """A host too busy to keep its deadline: the sandbox's init ends the run by its own clock and
    reports it, so a sleeping program is a timeout, not a broken sandbox."""
    real_communicate = local._communicate
    monkeypatch.setattr(local, "_communicate", lambda proc, stdin, deadline, limits: real_communicate(
        proc, stdin, deadline + 30, limits))  # fmt: skip
    result = sandbox.run("import time\ntime.sleep(60)", time_limit_s=0.5, wall_time_limit_s=1.0)
    assert result.status is Status.TIMEOUT and "wall-time" in result.detail, result
    assert 2.5 < result.wall_time_s < 10, result  # the init's clock: the wall limit + 2 s
