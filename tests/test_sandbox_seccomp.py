"""The seccomp filter, read without running anything: its syscall numbers against the kernel's
headers, and its decisions by interpreting the BPF program (the sandboxed behaviour itself is
tested in test_sandbox_escapes.py)."""

import errno
import os
import re

import pytest

from verl_avsd.sandbox import Sandbox, SandboxUnavailable, seccomp
from verl_avsd.sandbox.runner import working_isolations

HEADERS = {  # where linux-libc-dev (a dependency of g++) puts each architecture's numbers
    "x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "aarch64": "/usr/include/asm-generic/unistd.h",
}
ALLOW, KILL = seccomp.SECCOMP_RET_ALLOW, seccomp.SECCOMP_RET_KILL_PROCESS
EPERM, ENOSYS = seccomp.SECCOMP_RET_ERRNO | errno.EPERM, seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALLS))
def test_syscall_numbers_match_the_kernel_headers(arch):
    header = HEADERS[arch]
    if not os.path.exists(header):  # the machine's own architecture's header is always checked
        assert arch != seccomp.machine_architecture(), f"{header} is missing: apt-get install linux-libc-dev"
        return
    with open(header) as f:
        text = f.read()
    numbers = {name: int(n) for name, n in re.findall(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", text)}
    table = seccomp.SYSCALLS[arch]
    assert {name: numbers.get(name) for name in table} == table
    # every denied call has a number here, except those this architecture does not have
    absent = [name for name in seccomp.DENIED_SYSCALLS if name not in table]
    assert all(name not in numbers for name in absent), absent


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALLS))
def test_the_filter_decides_as_documented(arch):
    program = seccomp.filter_instructions(arch)
    table, audit = seccomp.SYSCALLS[arch], seccomp.AUDIT_ARCH[arch]

    def decide(name_or_nr, *args, arch_value=audit):
        nr = table[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
        return seccomp.evaluate(program, nr, arch_value, args)

    for name in seccomp.DENIED_SYSCALLS:
        if name in table:
            assert decide(name) == EPERM, name
    assert decide(0) == ALLOW and decide(table["socket"] - 1) == ALLOW  # read/io_setup etc.: untouched
    assert decide("clone3") == ENOSYS  # glibc falls back to clone, whose flags the filter can read
    assert decide("clone", 0x01200011) == ALLOW  # fork()'s flags
    assert decide("clone", 0x003D0F00) == ALLOW  # pthread_create's flags
    assert decide("clone", 0x10000000 | 17) == EPERM  # CLONE_NEWUSER
    assert decide("clone", 0x40000000 | 17) == EPERM  # CLONE_NEWNET
    for family, verdict in ((1, ALLOW), (2, ALLOW), (10, ALLOW), (16, None), (17, None), (38, None), (40, None)):
        expected = verdict or seccomp.SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT
        assert decide("socket", family, 1) == expected and decide("socketpair", family, 1) == expected, family
    assert decide(table["keyctl"], arch_value=0x40000003) == KILL  # another architecture: i386 (int 0x80)
    assert decide(0, arch_value=0x40000003) == KILL
    if arch == "x86_64":
        assert decide(0x40000000 | 39) == ENOSYS  # x32 getpid
    assert len(seccomp.program_bytes(arch)) == 8 * len(program)
    # memory that no process maps: allowed with cgroups (charged), refused without (unseen)
    assert decide("memfd_create") == ALLOW and decide("shmget") == ALLOW
    strict = seccomp.filter_instructions(arch, also_denied=seccomp.UNSAMPLED_MEMORY_SYSCALLS)
    for name in seccomp.UNSAMPLED_MEMORY_SYSCALLS:
        assert seccomp.evaluate(strict, table[name], audit) == EPERM, name


def test_an_unknown_architecture_gets_no_sandbox(monkeypatch):
    """Fail closed: without a syscall table the sandbox refuses to run anything."""
    with pytest.raises(seccomp.UnsupportedArchitecture, match="no seccomp syscall table for the 'riscv64'"):
        seccomp.program_bytes("riscv64")
    monkeypatch.setattr(seccomp, "machine_architecture", lambda: "riscv64")
    for name in [n for n, why in working_isolations().items() if why == "ok"]:
        with pytest.raises(SandboxUnavailable, match=f"the {name} isolation cannot be used here.*'riscv64'"):
            Sandbox(name)
