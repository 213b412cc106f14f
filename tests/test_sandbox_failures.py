"""Issue 13: a missing or broken sandbox stops the run with a named error; it never scores every
program 0.0 with sandbox_error and lets training go on."""

import dataclasses
import json
import os
import shutil

import pytest

from verl_avsd.rewards import code_score
from verl_avsd.sandbox import RunResult, Sandbox, SandboxUnavailable, Status
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
    with pytest.raises(SandboxUnavailable, match="failed twice on one run: hiccup"):
        code_score(RIGHT, TESTS, {"index": 0}, sandbox=sandbox)


def test_a_cgroup_hierarchy_that_vanishes_stops_the_run(sandbox, monkeypatch):
    if sandbox.backend.cgroups is None:  # nothing to lose: runs are bounded by sampling
        assert "NO CGROUPS" in sandbox.backend.limits_description
        return
    support = sandbox.backend.cgroups
    gone = {key: os.path.join(base, "vanished") for key, base in support.bases.items()}
    monkeypatch.setattr(sandbox.backend, "cgroups", dataclasses.replace(support, bases=gone))
    with pytest.raises(SandboxUnavailable, match="could not set up the sandbox"):
        sandbox.run("print(1)")
