"""Issue 13, escapes: what a program can reach of the host. Each test ran against the sandbox
before the fix (host root read-only with holes, no seccomp) and failed there.

Runs under every isolation that works here (bwrap; the unshare fallback as root). Programs only
try to reach files, sockets and kernel interfaces of this machine; nothing is sent anywhere.
"""

import json
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import uuid

import pytest

from verl_avsd.rewards import code_score
from verl_avsd.sandbox import Limits, Sandbox, Status, seccomp
from verl_avsd.sandbox import isolation as iso
from verl_avsd.sandbox.runner import working_isolations

WORKING = [name for name, why in working_isolations().items() if why == "ok"]
LIMITS = Limits(time_limit_s=2.0, wall_time_limit_s=6.0, memory_mb=256)
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", params=WORKING)
def sandbox(request):
    box = Sandbox(request.param, max_concurrent=2)
    yield box
    box.close()


def _run(sandbox, code, stdin=""):
    result = sandbox.run_tests(code, [stdin], limits=LIMITS)[0]
    assert result.status is Status.OK, result
    return json.loads(result.stdout)


@pytest.fixture
def open_folder():
    """A world-readable, world-writable host folder outside /tmp, like /var/tmp's own users make."""
    folder = tempfile.mkdtemp(prefix="avsd-escape-", dir="/var/tmp")
    os.chmod(folder, 0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_host_unix_sockets_are_unreachable(sandbox, open_folder):
    """A world-connectable socket anywhere on the host accepted a sandboxed connect():
    a read-only mount does not stop connect(), only not having the socket's path does."""
    tag = uuid.uuid4().hex[:12]
    paths = [os.path.join(open_folder, "open.sock"), f"/var/tmp/avsd-{tag}.sock", f"/tmp/avsd-{tag}.sock",
             f"/dev/shm/avsd-{tag}.sock"]  # fmt: skip
    if os.access("/run", os.W_OK):
        paths.append(f"/run/avsd-{tag}.sock")
    listeners = []
    try:
        for path in paths:
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(path)
            os.chmod(path, 0o777)
            listener.listen(4)
            listener.setblocking(False)
            listeners.append(listener)
        abstract = socket.socket(socket.AF_UNIX)
        abstract.bind(f"\0avsd-{tag}")  # the abstract namespace belongs to the network namespace
        abstract.listen(4)
        abstract.setblocking(False)
        listeners.append(abstract)
        code = """
import errno, json, socket, sys
outcome = {}
for path in json.loads(sys.stdin.read()):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        outcome[path] = "connected"
    except OSError as exc:
        outcome[path] = errno.errorcode.get(exc.errno, str(exc))
print(json.dumps(outcome))
"""
        outcome = _run(sandbox, code, json.dumps([*paths, f"\0avsd-{tag}"]))
        assert "connected" not in outcome.values(), outcome
        for listener in listeners:
            with pytest.raises(BlockingIOError):
                listener.accept()  # nothing reached any host listener
    finally:
        for listener in listeners:
            listener.close()
        for path in paths:
            if os.path.exists(path):
                os.remove(path)


def test_only_the_allow_listed_root_is_visible(sandbox):
    code = "import json, os\nprint(json.dumps(sorted(os.listdir('/'))))"
    visible = set(_run(sandbox, code))
    tops = {p.strip("/").split("/")[0] for p in [*iso.SYSTEM_FOLDERS, *sandbox.backend.tool_paths]}
    assert visible <= tops | {"dev", "etc", "proc", "tmp"}, visible
    assert not visible & {"work", "home", "var", "run", "sys", "srv", "mnt", "opt", "media"} - tops


def test_host_files_data_and_packages_are_unreadable(sandbox, open_folder):
    """A stdlib-only program read the prepared train parquet and printed the expected outputs;
    the checkout, .git and the venv's site-packages (to undo -I -S) were readable too."""
    data = os.path.join(open_folder, "train.parquet")
    with open(data, "w") as f:
        f.write("EXPECTED-OUTPUTS")
    os.chmod(data, 0o644)
    targets = [
        data,
        os.path.abspath(__file__),  # the checkout
        os.path.join(CHECKOUT, ".git", "HEAD"),
        os.path.join(CHECKOUT, "pyproject.toml"),
        "/etc/passwd",
        "/etc/hostname",
        "/proc/1/environ",
        "/sys/kernel/uevent_seqnum",
        sys.executable,  # the venv's interpreter link (the sandbox uses the real one)
    ]
    assert [path for path in targets if not os.path.exists(path)] == []  # each one is there to read
    package_dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths(vars={"base": sys.base_prefix})["purelib"]]
    code = """
import json, sys
request = json.loads(sys.stdin.read())
found = {}
for path in request["files"]:
    try:
        with open(path) as f:
            found[path] = f.read(64)
    except OSError as exc:
        found[path] = type(exc).__name__
for folder in request["packages"]:
    sys.path.insert(0, folder)
    try:
        import pytest  # installed in the venv and in the interpreter's own site-packages
        found[folder] = "imported"
    except ImportError as exc:
        found[folder] = type(exc).__name__
print(json.dumps(found))
"""
    found = _run(sandbox, code, json.dumps({"files": targets, "packages": package_dirs}))
    leaked = {path: value for path, value in found.items() if value not in ("FileNotFoundError", "PermissionError",
                                                                             "ModuleNotFoundError")}  # fmt: skip
    assert leaked == {}, leaked


def test_reading_the_expected_outputs_scores_nothing(sandbox, open_folder):
    """The reward hack itself: compute_score gave 1.0 to a program that printed the expected
    outputs read from a data file on the host."""
    answers = os.path.join(open_folder, "answers.json")
    with open(answers, "w") as f:
        json.dump({"1": "a", "2": "b", "3": "c"}, f)
    os.chmod(answers, 0o644)
    response = f"```python\nimport json\nprint(json.load(open({answers!r}))[input().strip()])\n```"
    ground_truth = json.dumps({"inputs": ["1\n", "2\n", "3\n"], "outputs": ["a\n", "b\n", "c\n"]})
    score = code_score(response, ground_truth, {"index": 0}, sandbox=sandbox, data_source="code/escape")
    assert score["score"] == 0.0 and score["status"] == "runtime_error", score
    honest = code_score("```python\nprint('abc'[int(input()) - 1])\n```", ground_truth, {"index": 0}, sandbox=sandbox)
    assert honest["score"] == 1.0, honest  # the same tests do pass for a real solution


def _key_user_uids() -> set[int]:
    with open("/proc/key-users") as f:
        return {int(line.split(":")[0]) for line in f if line.strip()}


def test_kernel_keys_cannot_be_made(sandbox):
    """add_key under a throwaway uid left an entry in /proc/key-users after the run."""
    code = """
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_USER_KEYRING = -2, -4
calls = {
    "add_key": lambda: libc.syscall(248, b"user", b"avsd", b"payload", 7, ctypes.c_int(KEY_SPEC_PROCESS_KEYRING)),
    "add_key_user": lambda: libc.syscall(248, b"user", b"avsd", b"payload", 7, ctypes.c_int(KEY_SPEC_USER_KEYRING)),
    "request_key": lambda: libc.syscall(249, b"user", b"avsd", None, ctypes.c_int(0)),
    "keyctl": lambda: libc.syscall(250, 0, ctypes.c_int(KEY_SPEC_USER_KEYRING), 1),  # KEYCTL_GET_KEYRING_ID, create
}
out = {}
for name, call in calls.items():
    out[name] = "ok" if call() >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""
    before = _key_user_uids()
    outcome = _run(sandbox, code)
    assert outcome == {"add_key": "EPERM", "add_key_user": "EPERM", "request_key": "EPERM", "keyctl": "EPERM"}
    throwaway = range(iso.THROWAWAY_UID_BASE, iso.THROWAWAY_UID_BASE + iso.THROWAWAY_UID_SPAN)
    assert {uid for uid in _key_user_uids() - before if uid in throwaway} == set()


def test_kernel_interfaces_a_judged_program_never_needs_are_refused(sandbox):
    code = """
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def call(name, *args):
    out[name] = "ok" if libc.syscall(*args) >= 0 else errno.errorcode[ctypes.get_errno()]
for family, name in ((40, "vsock"), (16, "netlink"), (17, "packet"), (38, "alg")):
    try:
        socket.socket(family, socket.SOCK_DGRAM if family != 17 else socket.SOCK_RAW).close()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
call("unshare_user", 272, 0x10000000)
call("clone_newuser", 56, 0x10000000 | 17, 0, 0, 0, 0)
call("ptrace_traceme", 101, 0, 0, 0, 0)
params = ctypes.create_string_buffer(120)
call("io_uring_setup", 425, 4, params)
call("perf_event_open", 298, ctypes.create_string_buffer(128), 0, -1, -1, 0)
call("bpf", 321, 0, ctypes.create_string_buffer(128), 128)
call("userfaultfd", 323, 0)
call("x32_getpid", 0x40000000 | 39)
# what programs do need still works
a, b = socket.socketpair()
a.sendall(b"x"); out["socketpair"] = b.recv(1).decode()
socket.socket(socket.AF_INET6).close(); out["inet6"] = "ok"
child = os.fork()
if child == 0:
    os._exit(7)
out["fork"] = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
print(json.dumps(out))
"""
    if seccomp.machine_architecture() != "x86_64":  # the syscall numbers above are x86-64's
        assert seccomp.machine_architecture() in seccomp.SYSCALLS
        return
    outcome = _run(sandbox, code)
    refused = {name: outcome.pop(name) for name in list(outcome) if name not in ("socketpair", "inet6", "fork")}
    assert refused == {
        "vsock": "EAFNOSUPPORT", "netlink": "EAFNOSUPPORT", "packet": "EAFNOSUPPORT", "alg": "EAFNOSUPPORT",
        "unshare_user": "EPERM", "clone_newuser": "EPERM", "ptrace_traceme": "EPERM", "io_uring_setup": "EPERM",
        "perf_event_open": "EPERM", "bpf": "EPERM", "userfaultfd": "EPERM", "x32_getpid": "ENOSYS",
    }  # fmt: skip
    assert outcome == {"socketpair": "x", "inet6": "ok", "fork": 7}


def test_a_32_bit_system_call_kills_the_process(sandbox):
    """int 0x80 on x86-64 uses the i386 numbering, which a filter for x86-64 would misread:
    the filter checks each call's architecture and kills the process on any other."""
    code = """
import ctypes, json, mmap, os
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))  # mov eax, 20 (i386 getpid); int 0x80; ret
getpid32 = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
child = os.fork()
if child == 0:
    os.write(1, str(getpid32()).encode())
    os._exit(0)
_, status = os.waitpid(child, 0)
print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}))
"""
    if seccomp.machine_architecture() != "x86_64":
        assert seccomp.machine_architecture() in seccomp.SYSCALLS
        return
    assert _run(sandbox, code) == {"signal": signal.SIGSYS}


def test_the_program_inherits_only_its_stdio_and_cannot_reach_the_init(sandbox):
    code = """
import json, os, signal
out = {"fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd"))}
for what, action in (("fd", lambda: os.listdir("/proc/1/fd")), ("signal", lambda: os.kill(1, signal.SIGALRM))):
    try:
        action()
        out[what] = "allowed"
    except OSError as exc:
        out[what] = type(exc).__name__
print(json.dumps(out))
"""
    outcome = _run(sandbox, code)
    assert outcome["fds"] == [0, 1, 2, 3]  # 3: the listing's own
    assert outcome["fd"] == "PermissionError" and outcome["signal"] == "PermissionError"
