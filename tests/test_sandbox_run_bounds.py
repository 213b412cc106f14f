"""Issue 13, limits: a run is bounded as a whole (CPU, memory, processes), and what contest
programs legitimately do (reopen stdin, threads, process pools) is not blocked.

Every test runs under each isolation that works here and, where this machine gives runs their
own cgroup, both with it and with the sampling fallback (`cgroups=False`), whose weaker bounds
are what the log announces. Bombs stay small: a few hundred MB, a few seconds of CPU.
"""

import json
import os
import shutil
import subprocess
import tempfile
import textwrap

import pytest

from verl_avsd.sandbox import Limits, Sandbox, Status
from verl_avsd.sandbox.cgroup import find_cgroups
from verl_avsd.sandbox.runner import working_isolations

WORKING = [name for name, why in working_isolations().items() if why == "ok"]
CGROUPS, NO_CGROUPS_BECAUSE = find_cgroups()
MODES = [(name, cgroups) for name in WORKING for cgroups in ((True, False) if CGROUPS else (False,))]
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_root_gets_cgroups_here():
    if os.geteuid() == 0:  # CI runs as root on a machine with cgroups: the strong bounds are tested
        assert CGROUPS is not None, NO_CGROUPS_BECAUSE


@pytest.fixture(scope="module", params=MODES, ids=[f"{n}-{'cgroup' if c else 'sampled'}" for n, c in MODES])
def sandbox(request):
    name, cgroups = request.param
    box = Sandbox(name, max_concurrent=2, cgroups=cgroups)
    assert (box.backend.cgroups is not None) == cgroups
    yield box
    box.close()


@pytest.fixture(autouse=True)
def run_cgroups_are_removed(request):
    yield
    if "sandbox" not in request.fixturenames:
        return
    sandbox = request.getfixturevalue("sandbox")
    if sandbox.backend.cgroups is not None:
        for base in sandbox.backend.cgroups.bases.values():
            assert [name for name in os.listdir(base) if name.startswith(f"run-{os.getpid()}-")] == []


def test_cpu_of_children_nobody_reaps_is_counted(sandbox):
    """3 never-reaped children burned 2.4 s against a 1 s limit: status ok, cpu_time_s 0.02."""
    code = textwrap.dedent("""
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                while True:
                    pass
        time.sleep(8)
        print("parent done")
    """)
    limits = Limits(time_limit_s=1.0, wall_time_limit_s=10.0, memory_mb=256)
    result = sandbox.run_tests(code, [""], limits=limits)[0]
    assert result.status is Status.TIMEOUT and "CPU time" in result.detail, result
    assert result.cpu_time_s >= 1.0 and result.wall_time_s < 8, result  # ended at the CPU limit, not the wall


def test_cpu_of_auto_reaped_children_is_counted_with_cgroups(sandbox):
    """With SIGCHLD ignored the kernel reaps children itself and their CPU time reaches no one's
    rusage; a cgroup still counts it. (The sampling fallback sees them only while they live, as
    its announcement says.)"""
    code = textwrap.dedent("""
        import os, signal, time
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        made = 0
        while made < 40:  # 40 x 0.05 s of CPU, twice the limit
            try:
                child = os.fork()
            except OSError:  # too many still running on a busy machine: let them finish
                time.sleep(0.1)
                continue
            if child == 0:
                start = time.process_time()
                while time.process_time() - start < 0.05:
                    pass
                os._exit(0)
            made += 1
            time.sleep(0.06)
        print("parent done")
    """)
    limits = Limits(time_limit_s=1.0, wall_time_limit_s=20.0, memory_mb=256)
    result = sandbox.run_tests(code, [""], limits=limits)[0]
    if sandbox.backend.cgroups is None:
        assert "seen only while they live" in sandbox.backend.limits_description
        assert result.status in (Status.OK, Status.TIMEOUT), result
        return
    assert result.status is Status.TIMEOUT and "CPU time" in result.detail, result


def test_forked_children_share_one_memory_limit(sandbox):
    """memory_mb was per process: 6 forked children reached 1.1 GB under memory_mb=256."""
    code = textwrap.dedent("""
        import os, time
        children = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:
                block = bytearray(b"x") * (100 << 20)  # 100 MB, every page touched
                time.sleep(3)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        print("600 MB held")
    """)
    limits = Limits(time_limit_s=5.0, wall_time_limit_s=10.0, memory_mb=256)
    result = sandbox.run_tests(code, [""], limits=limits)[0]
    assert result.status is Status.MEMORY_LIMIT and "256 MB" in result.detail, result
    assert "600 MB held" not in result.stdout or sandbox.backend.cgroups is not None  # (cgroup: OOM kills children)


def test_data_parked_in_kernel_socket_buffers_counts_with_cgroups(sandbox):
    """A sibling of the forked-memory hole: 8 processes each leave ~12 MB unread in unix socket
    pairs (kernel memory, in no process's Pss). A cgroup charges it; the sampling fallback
    cannot see it, and says so."""
    code = textwrap.dedent("""
        import os, socket, time
        for _ in range(8):
            if os.fork() == 0:
                pairs = [socket.socketpair() for _ in range(28)]
                for pair in pairs:
                    for end in pair:
                        end.setblocking(False)
                        try:
                            while True:
                                end.send(b"x" * 65536)
                        except BlockingIOError:
                            pass
                time.sleep(3)
                os._exit(0)
        time.sleep(3.5)
        print("parked")
    """)
    result = sandbox.run_tests(code, [""], limits=Limits(time_limit_s=5.0, wall_time_limit_s=10.0, memory_mb=64))[0]
    if sandbox.backend.cgroups is None:
        assert "kernel buffers (socket and pipe data)" in sandbox.backend.limits_description
        assert result.status in (Status.OK, Status.MEMORY_LIMIT), result
        return
    assert result.status is Status.MEMORY_LIMIT, result


def test_memory_no_process_maps_is_bounded_too(sandbox):
    """memfds written but never mapped, and SysV segments, hold memory outside every process's
    Pss: a cgroup charges it; the sampling fallback refuses the calls that make it."""
    code = textwrap.dedent("""
        import ctypes, errno, json, os
        out, files = {}, []
        try:
            for _ in range(20):  # 20 x 15 MB (each under the 16 MB file-size limit)
                files.append(os.memfd_create("hidden"))
                os.write(files[-1], b"x" * (15 << 20))
            out["memfd"] = "wrote 300 MB"
        except OSError as exc:
            out["memfd"] = errno.errorcode[exc.errno]
        libc = ctypes.CDLL(None, use_errno=True)
        segment = libc.shmget(0, 1 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
        out["shmget"] = "ok" if segment >= 0 else errno.errorcode[ctypes.get_errno()]
        print(json.dumps(out))
    """)
    result = sandbox.run_tests(code, [""], limits=Limits(time_limit_s=5.0, memory_mb=256))[0]
    if sandbox.backend.cgroups is None:
        assert result.status is Status.OK and json.loads(result.stdout) == {"memfd": "EPERM", "shmget": "EPERM"}
        return
    assert result.status is Status.MEMORY_LIMIT, result


def test_processes_and_threads_are_bounded_per_run(sandbox):
    code = textwrap.dedent("""
        import threading, time
        started = 0
        for _ in range(64):
            try:
                threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
                started += 1
            except RuntimeError:
                break
        print(started)
    """)
    limits = Limits(time_limit_s=2.0, wall_time_limit_s=6.0, memory_mb=256, max_processes=12)
    result = sandbox.run_tests(code, [""], limits=limits)[0]
    assert result.status is Status.OK and 0 < int(result.stdout) < 12, result


LEGIT_PYTHON = textwrap.dedent("""
    import concurrent.futures, multiprocessing, resource, sys, threading
    resource.setrlimit(resource.RLIMIT_STACK, (2**29, -1))  # the usual deep-recursion preamble
    sys.setrecursionlimit(10**6)
    threading.stack_size(2**27)
    def depth(n):
        return 0 if n == 0 else depth(n - 1) + 1
    deep = []
    runner = threading.Thread(target=lambda: deep.append(depth(100_000)))
    runner.start()
    runner.join()
    first = open("/dev/stdin").read()                 # reopen our stdin by name
    again = open("/proc/self/fd/0").read()            # ...or through /proc (already consumed)
    with open("/dev/stdout", "w") as out:
        out.write("via /dev/stdout\\n")
    sums = [0] * 4
    def work(i):
        sums[i] = sum(range(100_000 * (i + 1)))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        squares = sum(pool.map(lambda x: x * x, range(1000)))
    with multiprocessing.Pool(2) as pool:
        doubled = sum(pool.map(abs, range(-50, 50)))
    print(first.split()[0], repr(again), sum(sums), squares, doubled, deep)
""")


def test_contest_python_idioms_work_at_256_mb(sandbox):
    """/dev/stdin, /proc/self/fd/0, /dev/stdout gave EACCES; 4 threads, ThreadPoolExecutor(8) and
    multiprocessing.Pool(2) failed at memory_mb=256 (each thread stack reserved 64 MB of the
    address-space limit); raising RLIMIT_STACK for deep recursion failed (its hard limit was 64 MB)."""
    result = sandbox.run_tests(LEGIT_PYTHON, ["41 1\n"], limits=Limits(time_limit_s=5.0, memory_mb=256))[0]
    expected_sums = sum(sum(range(100_000 * (i + 1))) for i in range(4))
    assert result.status is Status.OK, result
    squares = sum(x * x for x in range(1000))
    assert result.stdout == f"via /dev/stdout\n41 '' {expected_sums} {squares} 2500 [100000]\n"


LEGIT_CPP = textwrap.dedent("""
    #include <cstdio>
    #include <thread>
    #include <vector>
    int main() {
        if (!freopen("/dev/stdin", "r", stdin)) { perror("freopen"); return 3; }
        long long n; if (scanf("%lld", &n) != 1) return 4;
        std::vector<long long> part(4, 0);
        std::vector<std::thread> threads;
        for (int t = 0; t < 4; ++t)
            threads.emplace_back([&, t] { for (long long i = t; i < n; i += 4) part[t] += i; });
        for (auto &th : threads) th.join();
        printf("%lld\\n", part[0] + part[1] + part[2] + part[3]);
    }
""")


def test_contest_cpp_idioms_work_at_256_mb(sandbox):
    """C++ freopen("/dev/stdin") failed with EACCES; 4 std::threads failed at memory_mb=256."""
    if "cpp" not in sandbox.languages:  # offered only where g++ is installed (test_sandbox checks that)
        assert shutil.which("g++") is None
        return
    limits = Limits(time_limit_s=5.0, memory_mb=256)
    result = sandbox.run_tests(LEGIT_CPP, ["1000000\n"], language="cpp", limits=limits)[0]
    assert result.status is Status.OK and result.stdout == f"{sum(range(1_000_000))}\n", result


UNPRIVILEGED_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from verl_avsd.sandbox import Limits, Sandbox
    box = Sandbox("bwrap", max_concurrent=1)
    limits = Limits(time_limit_s=1.0, wall_time_limit_s=8.0, memory_mb=256)
    programs = {
        "files": "import os\\nprint(sorted(os.listdir('/')), os.path.exists(%r))" % (sys.argv[2],),
        "init": "import os, signal, time\\nos.kill(1, signal.SIGALRM)\\ntime.sleep(0.3)\\n"
                "try:\\n    os.listdir('/proc/1/fd')\\n    print('fds open')\\nexcept OSError:\\n    print('alive')",
        "cpu": "import os, time\\nfor _ in range(3):\\n    if os.fork() == 0:\\n        while True: pass\\n"
               "time.sleep(60)",
        "memory": "import os, time\\nfor _ in range(6):\\n    if os.fork() == 0:\\n"
                  "        b = bytearray(b'x') * (100 << 20)\\n        time.sleep(60)\\n"
                  "time.sleep(60)",
    }
    out = {"limits": box.backend.limits_description}
    for name, code in programs.items():
        r = box.run_tests(code, [""], limits=limits)[0]
        out[name] = [r.status.value, r.stdout.strip(), r.detail]
    print(json.dumps(out))
""")


def test_bwrap_without_root_is_bounded_too():
    """Not root: a user namespace instead of a throwaway uid, and no cgroups: the init's sampling
    bounds CPU and memory, and the init cannot be signalled or have its report forged."""
    if "bwrap" not in WORKING:
        assert "bwrap" in working_isolations()
        return
    if os.geteuid() == 0:  # become nobody, with an interpreter nobody can run (ours is under /root)
        python = shutil.which("python3", path="/usr/bin:/bin")
        assert python is not None, "this test needs a system python3 (Debian: apt-get install python3)"
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python]
    else:
        command = [shutil.which("python3") or "python3"]
    # pytest's tmp_path is 0700 and a checkout may live under /root: give nobody a copy of the
    # sandbox package (standard library only) in a folder it can read
    folder = tempfile.mkdtemp(prefix="avsd-unprivileged-")
    try:
        package = os.path.join(CHECKOUT, "verl_avsd")
        shutil.copytree(os.path.join(package, "sandbox"), os.path.join(folder, "verl_avsd", "sandbox"),
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        open(os.path.join(folder, "verl_avsd", "__init__.py"), "w").close()  # not the package's: only sandbox/
        script = os.path.join(folder, "unprivileged.py")
        with open(script, "w") as f:
            f.write(UNPRIVILEGED_SCRIPT)
        for root, _dirs, files in os.walk(folder):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
        command = [*command, script, folder, CHECKOUT]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert "NO CGROUPS" in out["limits"]
    listed, checkout_visible = out["files"][1].rsplit(" ", 1)
    assert "work" not in listed and "root" not in listed and checkout_visible == "False", out
    assert out["init"][:2] == ["ok", "alive"], out
    # ended by the run's CPU and memory limits, long before the 8 s wall limit would have
    assert out["cpu"][0] == "timeout" and "CPU time" in out["cpu"][2], out
    assert out["memory"][0] == "memory_limit", out
