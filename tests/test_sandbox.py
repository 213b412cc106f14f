"""The sandbox runs programs correctly and reports what happened; setup problems are clear errors.

Every test that runs code runs once per isolation that works on this machine (bwrap, and the
unshare fallback where we are root); `test_sandbox_attacks.py` holds the hostile programs.
"""

import http.server
import json
import os
import pathlib
import shutil
import signal
import tempfile
import threading
import time

import pytest

from verl_avsd.sandbox import ISOLATION_ENV, Limits, Sandbox, SandboxUnavailable, Status, local, run, runner
from verl_avsd.sandbox import isolation as iso
from verl_avsd.sandbox.fusion import result_from_response
from verl_avsd.sandbox.runner import working_isolations

ISOLATION_REPORT = working_isolations()
WORKING = [name for name, why in ISOLATION_REPORT.items() if why == "ok"]
HAS_GXX = shutil.which("g++") is not None


def test_this_machine_has_a_working_isolation():
    assert WORKING, ISOLATION_REPORT
    if os.geteuid() == 0:  # root can always use the fallback; CI runs as root
        assert "unshare" in WORKING, ISOLATION_REPORT


@pytest.fixture(scope="module", params=WORKING)
def sandbox(request):
    box = Sandbox(request.param, max_concurrent=2)
    yield box
    box.close()


def test_runs_python_on_stdin(sandbox):
    result = sandbox.run("s = input()\nprint(s[::-1])", "hello\n", time_limit_s=5)
    assert result.status is Status.OK, result
    assert result.stdout == "olleh\n"
    assert result.exit_code == 0 and result.signal is None
    assert result.isolation == sandbox.isolation
    assert result.wall_time_s > 0


def test_exit_code_and_exception_are_runtime_errors(sandbox):
    exited = sandbox.run("raise SystemExit(3)", time_limit_s=5)
    assert exited.status is Status.RUNTIME_ERROR and exited.exit_code == 3
    raised = sandbox.run("print('before')\nraise ValueError('boom')", time_limit_s=5)
    assert raised.status is Status.RUNTIME_ERROR and raised.exit_code == 1
    assert raised.stdout == "before\n" and "ValueError: boom" in raised.stderr


def test_a_real_segfault_is_reported_with_its_signal(sandbox):
    result = sandbox.run("import ctypes\nctypes.string_at(0)", time_limit_s=5)
    assert result.status is Status.RUNTIME_ERROR
    assert result.signal == signal.SIGSEGV and "Segmentation" in result.detail


def test_cpu_time_of_the_program_is_measured(sandbox):
    result = sandbox.run("x = 0\nfor i in range(3_000_000): x += i\nprint(x)", time_limit_s=10)
    assert result.status is Status.OK and result.stdout == f"{sum(range(3_000_000))}\n"
    assert result.cpu_time_s > 0.1  # the loop alone needs more than that; start-up is ~0.03 s


def test_stderr_is_kept_up_to_its_cap_and_marked_truncated(sandbox):
    result = sandbox.run("import sys\nsys.stderr.write('e' * 200_000)\nprint('done')", time_limit_s=5)
    assert result.status is Status.OK and result.stdout == "done\n"
    assert len(result.stderr) == Limits().stderr_keep_bytes and result.stderr_truncated


def test_files_in_the_private_tmp_work_and_vanish(sandbox):
    code = "open('/tmp/scratch.txt', 'w').write('kept')\nprint(open('/tmp/scratch.txt').read(), __import__('os').getcwd())"
    result = sandbox.run(code, time_limit_s=5)
    assert result.status is Status.OK and result.stdout == "kept /tmp\n"
    assert not os.path.exists("/tmp/scratch.txt")


def test_run_tests_runs_in_order_and_stops_when_told(sandbox):
    code = "print(int(input()) * 2)"
    results = sandbox.run_tests(code, ["1", "2", "3"], limits=Limits(time_limit_s=5))
    assert [r.stdout for r in results] == ["2\n", "4\n", "6\n"]
    seen = []
    stopped = sandbox.run_tests(
        code, ["1", "2", "3"], limits=Limits(time_limit_s=5), keep_going=lambda i, r: seen.append(i) or i < 1
    )
    assert seen == [0, 1] and len(stopped) == 2


def test_run_many_keeps_order(sandbox):
    results = sandbox.run_many([("print(input())", str(i)) for i in range(5)], limits=Limits(time_limit_s=5))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(5)]


def test_languages_follow_the_compiler(sandbox):
    assert ("cpp" in sandbox.languages) == HAS_GXX
    with pytest.raises(ValueError, match="unsupported language 'rust'"):
        sandbox.run("fn main() {}", language="rust")


def test_cpp_compiles_once_and_runs_every_input(sandbox, monkeypatch):
    code = "#include <iostream>\nint main(){long long a,b;std::cin>>a>>b;std::cout<<a*b<<std::endl;}"
    if not HAS_GXX:  # C++ is offered only where a compiler is installed, and says so
        with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
            sandbox.run(code, "6 7", language="cpp")
        return
    prepares = []
    original = sandbox.backend.prepare
    monkeypatch.setattr(sandbox.backend, "prepare", lambda *a: prepares.append(a) or original(*a))
    results = sandbox.run_tests(code, ["6 7", "100000 100000"], language="cpp", limits=Limits(time_limit_s=5))
    assert [r.stdout for r in results] == ["42\n", "10000000000\n"]
    assert len(prepares) == 1
    assert sandbox.run("int main( { return 0 }", language="cpp").status is Status.COMPILE_ERROR


def test_cpp_compile_error_is_reported_for_every_input(sandbox):
    if not HAS_GXX:
        assert "cpp" not in sandbox.languages
        return
    results = sandbox.run_tests("int main( { return 0 }", ["1", "2"], language="cpp", limits=Limits(time_limit_s=5))
    assert len(results) == 2 and all(r.status is Status.COMPILE_ERROR for r in results)
    assert "error" in results[0].stderr and "main.cpp" in results[0].stderr


def test_concurrency_is_bounded_by_max_concurrent(monkeypatch):
    box = Sandbox(WORKING[0], max_concurrent=2)
    in_flight, peak, lock = [0], [0], threading.Lock()
    original = box.backend.run

    def counting_run(*args):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            return original(*args)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(box.backend, "run", counting_run)
    box.max_concurrent = 6  # more threads than slots: the semaphore alone must hold them back
    results = box.run_many([("import time\ntime.sleep(0.3)\nprint('x')", "")] * 6, limits=Limits(time_limit_s=5))
    assert all(r.stdout == "x\n" for r in results)
    assert peak[0] == 2
    box.close()


def test_module_level_run_uses_a_shared_sandbox():
    result = run("print(6 * 7)", time_limit_s=5)
    assert result.status is Status.OK and result.stdout == "42\n"
    assert result.isolation == WORKING[0]  # auto picks bwrap first when it works


@pytest.mark.parametrize("name", WORKING)
def test_environment_variable_forces_an_isolation(monkeypatch, name):
    monkeypatch.setenv(ISOLATION_ENV, name)
    box = Sandbox("auto")
    assert box.isolation == name
    assert box.run("print(1)", time_limit_s=5).stdout == "1\n"
    box.close()


def test_chosen_isolation_is_logged_as_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(runner, "_announced", set())
    with caplog.at_level("WARNING", logger="verl_avsd.sandbox.runner"):
        Sandbox(WORKING[-1]).close()
    assert f"isolation: {WORKING[-1]}" in caplog.text
    if WORKING[-1] == "unshare":
        assert "FALLBACK" in caplog.text and "apt-get install bubblewrap" in caplog.text


def test_without_any_isolation_tool_code_is_refused(monkeypatch, tmp_path):
    monkeypatch.setitem(iso.CLEAN_ENV, "PATH", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(ISOLATION_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match="install bubblewrap"):
        Sandbox("auto")


@pytest.mark.parametrize("name", WORKING)
def test_a_broken_interpreter_fails_the_probe_clearly(name):
    with pytest.raises(SandboxUnavailable, match=f"the {name} isolation failed its probe run"):
        Sandbox(name, python_executable="/nonexistent/bin/python3")


def test_without_pidfds_the_exit_is_polled(sandbox, monkeypatch):
    monkeypatch.delattr(os, "pidfd_open")  # as on Linux < 5.3
    done = sandbox.run("import time\ntime.sleep(0.2)\nprint('late')", time_limit_s=5)
    assert done.status is Status.OK and done.stdout == "late\n" and done.wall_time_s < 2
    stuck = sandbox.run("import time\ntime.sleep(60)", time_limit_s=1, wall_time_limit_s=1.5)
    assert stuck.status is Status.TIMEOUT and stuck.wall_time_s < 3.5


def test_results_survive_another_thread_reaping_our_children(sandbox):
    # Libraries sometimes call waitpid(-1): the init's own report must still give the status.
    stop = threading.Event()

    def reap_everything():
        while not stop.is_set():
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.001)

    reaper = threading.Thread(target=reap_everything)
    reaper.start()
    try:
        echoed = [sandbox.run("print(input())", str(i), time_limit_s=5) for i in range(4)]
        failed = sandbox.run("raise SystemExit(3)", time_limit_s=5)
    finally:
        stop.set()
        reaper.join()
    assert [r.stdout for r in echoed] == ["0\n", "1\n", "2\n", "3\n"]
    assert failed.status is Status.RUNTIME_ERROR and failed.exit_code == 3


def test_too_old_bubblewrap_is_refused(monkeypatch):
    if "bwrap" not in WORKING:  # nothing to refuse here: bwrap is already unavailable, and says why
        assert "bwrap" in ISOLATION_REPORT
        return
    monkeypatch.setattr(iso, "bwrap_version", lambda: (0, 6, 1))
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap 0.6.1 is too old: 0.7.0 or newer"):
        Sandbox("bwrap")


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="isolation must be one of"):
        Sandbox("docker")
    with pytest.raises(ValueError, match="needs sandbox_fusion_url"):
        Sandbox("sandbox_fusion")
    with pytest.raises(ValueError, match="http"):
        Sandbox("sandbox_fusion", sandbox_fusion_url="localhost:8080")
    with pytest.raises(ValueError, match="time_limit_s must be a positive"):
        Limits(time_limit_s=0)
    with pytest.raises(ValueError, match="memory_mb must be at least 16"):
        Limits(memory_mb=4)


# -- pieces of the isolation, without running anything ----------------------------------


def test_the_mount_plan_is_an_allow_list():
    base = pathlib.Path(tempfile.mkdtemp())  # pytest's tmp_path sits under a 0700 folder
    prefix = base / "home" / "me" / "python"
    packages = prefix / "lib" / "python3.11" / "site-packages"
    packages.mkdir(parents=True)
    os.chmod(base / "home", 0o700)
    try:
        plan = iso.mount_plan(
            files=[("/host/main.py", "/tmp/main.py")], writable_dirs=[], scratch_bytes=1 << 20,
            tool_paths=[str(prefix)], hidden_dirs=[],
        )  # fmt: skip
    finally:
        shutil.rmtree(base)
    steps = [(m.kind, m.target) for m in plan]
    binds = {m.source for m in plan if m.kind in ("ro-bind", "bind")}
    assert "/" not in binds and not any(b.startswith(("/home", "/work", "/var", "/run", "/sys")) for b in binds)
    assert binds <= {*iso.SYSTEM_FOLDERS, *iso.SYSTEM_FILES, str(prefix), "/host/main.py"}
    # the folders above the interpreter are made world-traversable before it is bound there
    # (bwrap would make them 0700), and its site-packages are covered by an empty read-only tmpfs
    chain = [("dir", str(base)), ("dir", str(base / "home")), ("dir", str(base / "home" / "me"))]
    chain.append(("ro-bind", str(prefix)))
    assert [step for step in steps if step in chain] == chain
    assert all(m.mode == 0o755 for m in plan if m.kind == "dir")
    hide = steps.index(("tmpfs", str(packages)))
    assert steps[hide + 1] == ("remount-ro", str(packages)) and hide > steps.index(("ro-bind", str(prefix)))
    assert steps[-1] == ("remount-ro", "/")


def test_only_the_interpreters_binary_and_libraries_are_bound(tmp_path):
    """Not its whole prefix: a conda root also holds other environments and a package cache."""
    for folder in ("bin", "lib/python3.11", "envs/other/lib", "pkgs/numpy"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "bin" / "python3.11").write_text("")
    (tmp_path / "bin" / "python3").symlink_to("python3.11")
    assert local._interpreter_paths(str(tmp_path / "bin" / "python3")) == [
        str(tmp_path / "bin" / "python3.11"), str(tmp_path / "lib"),
    ]  # fmt: skip


def test_inner_command_sets_every_per_process_limit():
    limits = Limits(time_limit_s=1.5, memory_mb=128, max_processes=8, max_file_mb=2, max_open_files=32, stack_mb=16)
    cmd = iso.inner_command(["prog"], limits, uid=1_500_000_123)
    assert "--reuid=1500000123" in cmd and "--no-new-privs" in cmd and cmd[-1] == "prog"
    # no address-space limit: thread stacks only reserve it (memory is bounded per run)
    assert not any(flag.startswith("--as") for flag in cmd)
    for flag in (
        "--cpu=3:3",  # a backstop a second past the limit: the init ends the run at the limit
        "--nproc=8",
        f"--fsize={2 << 20}",
        "--nofile=32",
        f"--stack={16 << 20}:unlimited",  # programs may raise their own stack (memory is bounded per run)
        "--core=0",
    ):
        assert flag in cmd
    assert "--reuid" not in " ".join(iso.inner_command(["prog"], limits, uid=None))


# -- SandboxFusion backend, against a local stand-in server -------------------------------


class _FakeSandboxFusion(http.server.BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(payload)
        code = payload["code"]
        if "COMPILE_FAIL" in code:
            answer = {
                "status": "Failed",
                "compile_result": {"status": "Finished", "return_code": 1, "stderr": "error: x"},
                "run_result": None,
            }
        elif "SLOW" in code:
            answer = {
                "status": "Failed",
                "compile_result": None,
                "run_result": {
                    "status": "TimeLimitExceeded",
                    "return_code": None,
                    "stdout": "",
                    "stderr": "",
                    "execution_time": 1.0,
                },
            }
        elif "CRASH" in code:
            answer = {
                "status": "Failed",
                "compile_result": None,
                "run_result": {
                    "status": "Finished",
                    "return_code": 1,
                    "stdout": "",
                    "stderr": "MemoryError",
                    "execution_time": 0.1,
                },
            }
        elif "BROKEN" in code:
            answer = {"status": "SandboxError", "message": "pod died"}
        else:
            answer = {
                "status": "Success",
                "compile_result": None,
                "run_result": {
                    "status": "Finished",
                    "return_code": 0,
                    "stdout": payload["stdin"].upper(),
                    "stderr": "",
                    "execution_time": 0.05,
                },
            }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_fusion_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeSandboxFusion)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeSandboxFusion.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/run_code"
    server.shutdown()


def test_sandbox_fusion_results_map_onto_statuses(fake_fusion_url):
    box = Sandbox("sandbox_fusion", sandbox_fusion_url=fake_fusion_url)
    assert box.isolation == "sandbox_fusion"
    ok = box.run("print(input().upper())", "abc", time_limit_s=3, memory_mb=512)
    assert ok.status is Status.OK and ok.stdout == "ABC" and ok.isolation == "sandbox_fusion"
    sent = _FakeSandboxFusion.requests[-1]
    assert sent["run_timeout"] == 3 and sent["memory_limit_MB"] == 512 and sent["language"] == "python" and sent["stdin"] == "abc"
    assert box.run("COMPILE_FAIL", language="cpp").status is Status.COMPILE_ERROR
    assert box.run("SLOW").status is Status.TIMEOUT
    assert box.run("CRASH").status is Status.MEMORY_LIMIT
    before = len(_FakeSandboxFusion.requests)
    with pytest.raises(SandboxUnavailable, match="failed twice on one run.*pod died.*probe program failed"):
        box.run("BROKEN")  # a broken sandbox stops the run instead of scoring the program 0
    sent = [request["code"] for request in _FakeSandboxFusion.requests[before:]]
    assert sent == ["BROKEN", "BROKEN", runner.PROBE_CODE]  # retried once, then the probe said it is broken


def test_sandbox_fusion_unreachable_is_a_sandbox_error():
    result = result_from_response(None, "API Call Failed: connection refused", Limits(), 0.1)
    assert result.status is Status.SANDBOX_ERROR and "connection refused" in result.detail


def test_the_init_runs_from_its_source_from_a_checkout_under_tmp(monkeypatch):
    """bwrap mounts a private /tmp before our init starts, so a checkout under the host's /tmp
    used to vanish inside. The init now runs from its source text (python -c): no file of the
    checkout is bound into the sandbox, wherever it lives."""
    checkout = tempfile.mkdtemp(prefix="verl-avsd-checkout-", dir="/tmp")
    try:
        init_copy = os.path.join(checkout, "_sandbox_init.py")
        shutil.copy(iso.SANDBOX_INIT, init_copy)
        monkeypatch.setattr(iso, "SANDBOX_INIT", init_copy)
        plan = {"mounts": [], "cwd": "/tmp"}
        command = iso.bwrap_command([], plan, ["true"], status_fd=3, as_root=os.geteuid() == 0)
        assert init_copy not in command and command[command.index("-c") + 1].startswith('"""Pid 1')
        for name in WORKING:
            box = Sandbox(name, max_concurrent=1)
            try:
                result = box.run("print(6 * 7)", "", time_limit_s=5)
            finally:
                box.close()
            assert result.status is Status.OK and result.stdout.strip() == "42", result
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
