"""Hostile programs: each must be contained and reported, and the worker must run programs after.

Runs under every isolation that works on this machine (bwrap; the unshare fallback as root).
Every bomb is bounded (a few processes, a few hundred MB, a couple of seconds), so the suite
never disturbs other work on the machine. The network attack only tries 127.0.0.1 and a
made-up private address; nothing outside this machine is ever contacted.
"""

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid

import pytest

from verl_avsd.sandbox import Limits, Sandbox, Status
from verl_avsd.sandbox import isolation as iso
from verl_avsd.sandbox.judge import Program, TestSet, judge
from verl_avsd.sandbox.runner import working_isolations

WORKING = [name for name, why in working_isolations().items() if why == "ok"]
ATTACK_LIMITS = Limits(time_limit_s=1.0, wall_time_limit_s=2.5, memory_mb=256, max_processes=16, max_output_bytes=1 << 20)
WALL_SLACK_S = 2.0  # start-up and teardown on a busy 2-core machine


@pytest.fixture(scope="module", params=WORKING)
def sandbox(request):
    box = Sandbox(request.param, max_concurrent=2)
    yield box
    box.close()


def _throwaway_uid_processes() -> list[int]:
    """Host pids of processes running as a sandbox throwaway uid (root runs use them)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                uid_line = next(line for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        real_uid = int(uid_line.split()[1])
        if iso.THROWAWAY_UID_BASE <= real_uid < iso.THROWAWAY_UID_BASE + iso.THROWAWAY_UID_SPAN:
            pids.append(int(entry))
    return pids


def _processes_with(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _eventually_empty(probe, timeout_s: float = 3.0) -> list:
    deadline = time.monotonic() + timeout_s
    while (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@pytest.fixture(autouse=True)
def contained_and_worker_alive(sandbox):
    yield
    # Nothing the attack started survives it...
    assert _eventually_empty(_throwaway_uid_processes) == []
    # ...and the worker still runs a plain program correctly.
    after = sandbox.run("print(6 * 7)", time_limit_s=5)
    assert after.status is Status.OK and after.stdout == "42\n", after


def _run(sandbox, code, stdin="", limits=ATTACK_LIMITS):
    return sandbox.run_tests(code, [stdin], limits=limits)[0]


def test_fork_bomb_hits_the_process_limit(sandbox):
    code = """
import os, time
made = 0
for _ in range(10_000):
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        made += 1
    except OSError:
        break
print(made)
"""
    result = _run(sandbox, code)
    assert result.status is Status.OK, result
    assert int(result.stdout) < ATTACK_LIMITS.max_processes  # the parent counts as one
    assert result.wall_time_s < ATTACK_LIMITS.wall_limit_s  # the sleeping children did not hold it


def test_exponential_fork_bomb_is_killed_whole(sandbox):
    code = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""
    result = _run(sandbox, code)
    assert result.status in (Status.TIMEOUT, Status.RUNTIME_ERROR), result
    assert result.wall_time_s < ATTACK_LIMITS.wall_limit_s + WALL_SLACK_S


def test_memory_bomb_hits_the_memory_limit(sandbox):
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))"
    result = _run(sandbox, code)
    assert result.status is Status.MEMORY_LIMIT, result
    assert f"limit of {ATTACK_LIMITS.memory_mb} MB" in result.detail


def test_infinite_loop_hits_the_time_limit(sandbox):
    result = _run(sandbox, "while True:\n    pass")
    assert result.status is Status.TIMEOUT, result
    assert result.wall_time_s < ATTACK_LIMITS.wall_limit_s + WALL_SLACK_S


def test_sleeping_past_the_limit_is_killed_at_the_wall_limit(sandbox):
    result = _run(sandbox, "import time\ntime.sleep(60)\nprint('woke')")
    assert result.status is Status.TIMEOUT and "wall-time" in result.detail, result
    assert ATTACK_LIMITS.wall_limit_s <= result.wall_time_s < ATTACK_LIMITS.wall_limit_s + WALL_SLACK_S
    assert "woke" not in result.stdout


def test_network_is_unreachable(sandbox):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = f"""
import errno, json, socket
outcome = {{}}
for name, address in (("loopback", ("127.0.0.1", {port})), ("made_up", ("10.255.255.1", 80))):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(address)
        outcome[name] = "connected"
    except OSError as exc:
        outcome[name] = errno.errorcode.get(exc.errno, str(exc))
print(json.dumps(outcome))
"""
    try:
        result = _run(sandbox, code)
        assert result.status is Status.OK, result
        outcome = json.loads(result.stdout)
        assert outcome["made_up"] == "ENETUNREACH"
        assert outcome["loopback"] in ("ECONNREFUSED", "ENETUNREACH")  # the sandbox's own empty loopback
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing reached the host's listener
    finally:
        listener.close()


def test_nothing_outside_its_tmp_is_writable(sandbox):
    tag = uuid.uuid4().hex
    open_dir = tempfile.mkdtemp(prefix="avsd-attack-", dir="/var/tmp")  # world-writable host folder
    os.chmod(open_dir, 0o777)
    targets = [
        f"/etc/avsd-attack-{tag}",
        f"/var/tmp/avsd-attack-{tag}",
        f"{open_dir}/avsd-attack-{tag}",
        f"{sandbox.backend.base_dir}/avsd-attack-{tag}",
        f"{os.getcwd()}/avsd-attack-{tag}",
        f"/dev/shm/avsd-attack-{tag}",
        f"/tmp/avsd-attack-{tag}",  # the sandbox's private /tmp: allowed, but never the host's
    ]
    code = """
import json, sys
written = []
for path in json.loads(sys.stdin.read()):
    try:
        with open(path, "w") as f:
            f.write("pwned")
        written.append(path)
    except OSError:
        pass
print(json.dumps(written))
"""
    try:
        result = _run(sandbox, code, json.dumps(targets))
        assert result.status is Status.OK, result
        assert json.loads(result.stdout) == [f"/dev/shm/avsd-attack-{tag}", f"/tmp/avsd-attack-{tag}"]
        assert [path for path in targets if os.path.exists(path)] == []
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)


def test_another_runs_files_are_out_of_reach(sandbox):
    secret = os.path.join(sandbox.backend.base_dir, "secret.txt")
    with open(secret, "w") as f:
        f.write("TOPSECRET")
    victim_code = "open('/tmp/victim.txt', 'w').write('TOPSECRET')\nimport time\ntime.sleep(1.5)"
    victim = threading.Thread(target=_run, args=(sandbox, victim_code))
    victim.start()
    time.sleep(0.5)  # the victim runs, with its files on the host and in its /tmp
    spy_code = """
import glob, json, os, sys
base = sys.stdin.read()
found = {"tmp": sorted(os.listdir("/tmp")), "glob": glob.glob("/tmp/verl-avsd-sandbox-*") + glob.glob(base + "/*")}
for path in (base + "/secret.txt", "/tmp/victim.txt"):
    try:
        found[path] = open(path).read()
    except OSError as exc:
        found[path] = type(exc).__name__
print(json.dumps(found))
"""
    try:
        result = _run(sandbox, spy_code, sandbox.backend.base_dir)
    finally:
        victim.join()
        os.remove(secret)
    assert result.status is Status.OK, result
    assert "TOPSECRET" not in result.stdout
    found = json.loads(result.stdout)
    # only its own program; plus, for an interpreter installed under the host's /tmp, the
    # read-only path to it (its folders hold nothing else)
    bound_back = {p.split("/")[2] for p in sandbox.backend.tool_paths if p.startswith("/tmp/")}
    assert found["tmp"] == sorted({"main.py"} | bound_back) and found["glob"] == []


def test_stdout_flood_hits_the_output_limit(sandbox):
    result = _run(sandbox, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
    assert result.status is Status.OUTPUT_LIMIT, result
    assert len(result.stdout) == ATTACK_LIMITS.max_output_bytes and result.stdout_truncated
    assert result.wall_time_s < ATTACK_LIMITS.wall_limit_s


def test_stderr_flood_hits_the_output_limit_too(sandbox):
    result = _run(sandbox, "import sys\nwhile True:\n    sys.stderr.write('e' * 65536)")
    assert result.status is Status.OUTPUT_LIMIT, result
    assert len(result.stderr) == ATTACK_LIMITS.stderr_keep_bytes


def test_background_process_does_not_outlive_the_run(sandbox):
    marker = f"{30 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6:06d}"  # a unique sleep length
    code = f"""
import os
if os.fork() == 0:
    os.setsid()
    os.execvp("sleep", ["sleep", "{marker}"])  # keeps our stdout open, in a new session
print("bye", flush=True)
"""
    result = _run(sandbox, code)
    assert result.status is Status.OK and result.stdout == "bye\n", result
    assert result.wall_time_s < ATTACK_LIMITS.wall_limit_s  # the daemon did not hold the run open
    assert _eventually_empty(lambda: _processes_with(marker)) == []


def test_redirected_or_closed_stdout_cannot_fake_an_answer(sandbox, capfd):
    code = """
import os
os.dup2(2, 1)                     # stdout now goes to stderr
print("FAKE-42", flush=True)
os.close(1)
paths = ["/dev/tty", "/dev/stdout", "/proc/self/fd/1", "/proc/1/fd/1"]
paths += [f"/proc/{pid}/fd/1" for pid in os.listdir("/proc") if pid.isdigit()]
for path in paths:
    try:
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, b"FAKE-42\\n")
        os.close(fd)
    except OSError:
        pass
"""
    report = judge(Program(code, "python"), TestSet([""], ["FAKE-42\n"]), sandbox=sandbox, limits=ATTACK_LIMITS)
    assert report.status == "wrong_answer" and report.num_passed == 0
    result = report.outcomes[0].result
    assert "FAKE-42" not in result.stdout and "FAKE-42" in result.stderr
    assert "FAKE-42" not in capfd.readouterr().out  # nothing reached the worker's own stdout


def test_exit_without_flushing_gives_only_what_was_written(sandbox):
    code = "import os\nprint(1, flush=True)\nprint(2)\nprint(3)\nos._exit(0)"
    report = judge(Program(code, "python"), TestSet([""], ["1\n2\n3\n"]), sandbox=sandbox, limits=ATTACK_LIMITS)
    assert report.status == "wrong_answer"
    result = report.outcomes[0].result
    assert result.status is Status.OK and result.exit_code == 0 and result.stdout == "1\n"


def test_deep_recursion_is_contained(sandbox):
    code = "import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1) + 1\nf(0)"
    result = _run(sandbox, code)
    assert result.status in (Status.RUNTIME_ERROR, Status.MEMORY_LIMIT, Status.TIMEOUT), result
    if "cpp" in sandbox.languages:  # native recursion overflows the stack: a segfault
        cpp = (
            "int f(int n){volatile char pad[1024]; pad[0]=n; return n ? f(n - 1) + pad[0] : 0;}\nint main(){return f(100000000);}"
        )
        native = sandbox.run_tests(cpp, [""], language="cpp", limits=ATTACK_LIMITS)[0]
        assert native.status is Status.RUNTIME_ERROR and native.signal == 11, native


HUGE_STDIN = "7" * (32 << 20)


def test_huge_stdin_read_in_full(sandbox):
    code = "import sys\nprint(len(sys.stdin.buffer.read()))"
    result = _run(sandbox, code, HUGE_STDIN, Limits(time_limit_s=5, memory_mb=256))
    assert result.status is Status.OK and result.stdout == f"{len(HUGE_STDIN)}\n", result


def test_huge_stdin_ignored_by_a_program_that_exits(sandbox):
    result = _run(sandbox, "print('ok')", HUGE_STDIN)
    assert result.status is Status.OK and result.stdout == "ok\n", result
    assert result.wall_time_s < ATTACK_LIMITS.wall_limit_s


def test_huge_stdin_never_read_by_a_sleeping_program(sandbox):
    result = _run(sandbox, "import time\ntime.sleep(60)", HUGE_STDIN)
    assert result.status is Status.TIMEOUT, result
    assert result.wall_time_s < ATTACK_LIMITS.wall_limit_s + WALL_SLACK_S
