"""The system calls a judged program may not make: a seccomp filter, assembled here as classic BPF.

A contest program reads input, computes, writes output, and perhaps forks, starts threads or
talks to its own processes over pipes and unix sockets. It never needs the kernel's keyrings
(whose entries outlive the run under its throwaway uid), debugging other processes, namespaces,
mounts, kernel modules, BPF, io_uring (which runs system calls that this filter never sees),
performance counters, or sockets of families other than unix and IP (vsock reaches the host
from a VM guest; netlink, packet and the crypto API are kernel attack surface). Those calls fail
with EPERM (EAFNOSUPPORT for socket families, ENOSYS for clone3, so glibc falls back to clone,
whose namespace flags are then checked); everything else is allowed.

The filter is built on the host (`program_bytes`) and installed by the sandbox's init in the
program's process just before it execs (`_sandbox_init.install_seccomp`), so it applies under
bwrap and unshare alike and to everything the program starts. It checks the architecture of
every call and kills the process on any other one (a 32-bit call through int 0x80 on x86-64
would otherwise use another numbering); x32 calls on x86-64 fail. A machine whose architecture
has no table here gets no sandbox at all (`UnsupportedArchitecture`), never an unfiltered one.

    seccomp_data (what the filter reads, struct seccomp_data in linux/seccomp.h):
      offset 0: int nr            offset 4: u32 arch
      offset 8: u64 ip            offset 16 + 8*i: u64 args[i] (low half first: little-endian)
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

# classic BPF opcodes (linux/filter.h)
BPF_LD_W_ABS = 0x20  # A = u32 at offset k of seccomp_data
BPF_JEQ_K = 0x15  # if A == k: jump jt else jump jf
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45  # if A & k
BPF_RET_K = 0x06

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
MAX_JUMP = 255  # jt/jf are one byte

X32_SYSCALL_BIT = 0x40000000
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
ALLOWED_SOCKET_FAMILIES = (AF_UNIX, AF_INET, AF_INET6)
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (linux/sched.h)
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# What a judged program is refused, by kernel purpose (names as in the kernel's syscall tables).
DENIED_SYSCALLS = (
    # kernel keyrings: a key made under a throwaway uid stays in /proc/key-users after the run
    "add_key", "request_key", "keyctl",
    # other processes' memory and state
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    # namespaces, mounts and the filesystem tree
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "open_by_handle_at", "name_to_handle_at", "quotactl", "quotactl_fd", "swapon", "swapoff",
    # the kernel itself
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "bpf", "perf_event_open", "userfaultfd", "syslog", "acct", "lookup_dcookie", "vhangup",
    "fanotify_init", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "iopl", "ioperm", "modify_ldt", "uselib", "nfsservctl",
)  # fmt: skip
# Denied too where no cgroup bounds the run's memory: they hold memory that is in no process's
# Pss (a memfd written to but not mapped, a SysV segment detached), so the sampling fallback
# could not see it. With a cgroup they are charged like any other memory and stay allowed.
UNSAMPLED_MEMORY_SYSCALLS = ("memfd_create", "shmget")

# Syscall numbers, checked against the kernel headers by tests/test_sandbox_seccomp.py:
# x86_64 from asm/unistd_64.h, aarch64 from asm-generic/unistd.h.
SYSCALLS = {
    "x86_64": {
        "add_key": 248, "request_key": 249, "keyctl": 250,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438, "kcmp": 312,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "mount_setattr": 442, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "open_by_handle_at": 304, "name_to_handle_at": 303,
        "quotactl": 179, "quotactl_fd": 443, "swapon": 167, "swapoff": 168,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
        "kexec_file_load": 320, "reboot": 169, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "syslog": 103, "acct": 163, "lookup_dcookie": 212, "vhangup": 153, "fanotify_init": 300,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "iopl": 172, "ioperm": 173, "modify_ldt": 154, "uselib": 134, "nfsservctl": 180,
        "socket": 41, "socketpair": 53, "clone": 56, "clone3": 435, "memfd_create": 319, "shmget": 29,
    },
    "aarch64": {
        "add_key": 217, "request_key": 218, "keyctl": 219,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438, "kcmp": 272,
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "mount_setattr": 442, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "open_by_handle_at": 265, "name_to_handle_at": 264,
        "quotactl": 60, "quotactl_fd": 443, "swapon": 224, "swapoff": 225,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
        "kexec_file_load": 294, "reboot": 142, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "syslog": 116, "acct": 89, "lookup_dcookie": 18, "vhangup": 58, "fanotify_init": 262,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "nfsservctl": 42,  # iopl, ioperm, modify_ldt and uselib do not exist on aarch64
        "socket": 198, "socketpair": 199, "clone": 220, "clone3": 435, "memfd_create": 279, "shmget": 194,
    },
}  # fmt: skip

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # linux/audit.h


class UnsupportedArchitecture(RuntimeError):
    """No syscall table for this machine: the sandbox refuses to run rather than run unfiltered."""


@dataclass(frozen=True)
class Instruction:
    code: int
    jt: int
    jf: int
    k: int

    def pack(self) -> bytes:
        return struct.pack("=HBBI", self.code, self.jt, self.jf, self.k)  # struct sock_filter


def machine_architecture() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def pivot_root_number(arch: str | None = None) -> int:
    """The pivot_root syscall number (the unshare isolation's init needs it; glibc has no wrapper)."""
    return _table(arch or machine_architecture())["pivot_root"]


def _table(arch: str) -> dict[str, int]:
    if arch not in SYSCALLS:
        raise UnsupportedArchitecture(
            f"the code sandbox has no seccomp syscall table for the {arch!r} architecture (it knows "
            f"{', '.join(SYSCALLS)}), and it never runs programs without one"
        )
    return SYSCALLS[arch]


def _errno(code: int) -> int:
    return SECCOMP_RET_ERRNO | code


def filter_instructions(arch: str | None = None, *, also_denied: tuple[str, ...] = ()) -> list[Instruction]:
    """The filter, in order. Every check jumps forward to one of the shared returns at the end.

    also_denied: more syscall names to refuse (UNSAMPLED_MEMORY_SYSCALLS without cgroups).
    """
    arch = arch or machine_architecture()
    table = _table(arch)
    denied = [table[name] for name in (*DENIED_SYSCALLS, *also_denied) if name in table]
    # Layout: [arch check] [x32 check] [nr dispatch ...] ALLOW | socket args | clone args | returns
    body: list[tuple[str, int, str | None, str | None, int]] = []  # (op, k, jt label, jf label, code)
    body.append(("ld", 4, None, None, BPF_LD_W_ABS))
    body.append(("jeq", AUDIT_ARCH[arch], None, "kill", BPF_JEQ_K))
    body.append(("ld", 0, None, None, BPF_LD_W_ABS))
    if arch == "x86_64":
        body.append(("jge", X32_SYSCALL_BIT, "enosys", None, BPF_JGE_K))
    for number in denied:
        body.append(("jeq", number, "eperm", None, BPF_JEQ_K))
    body.append(("jeq", table["clone3"], "enosys", None, BPF_JEQ_K))
    body.append(("jeq", table["socket"], "socket", None, BPF_JEQ_K))
    body.append(("jeq", table["socketpair"], "socket", None, BPF_JEQ_K))
    body.append(("jeq", table["clone"], "clone", None, BPF_JEQ_K))
    body.append(("ret", SECCOMP_RET_ALLOW, None, None, BPF_RET_K))
    labels = {"socket": len(body)}
    body.append(("ld", 16, None, None, BPF_LD_W_ABS))  # args[0] low half: the address family
    for family in ALLOWED_SOCKET_FAMILIES:
        body.append(("jeq", family, "allow", None, BPF_JEQ_K))
    body.append(("ret", _errno(errno.EAFNOSUPPORT), None, None, BPF_RET_K))
    labels["clone"] = len(body)
    body.append(("ld", 16, None, None, BPF_LD_W_ABS))  # args[0] low half: the clone flags
    body.append(("jset", CLONE_NAMESPACE_FLAGS, "eperm", None, BPF_JSET_K))
    labels["allow"] = len(body)
    body.append(("ret", SECCOMP_RET_ALLOW, None, None, BPF_RET_K))
    for label, value in (
        ("eperm", _errno(errno.EPERM)),
        ("enosys", _errno(errno.ENOSYS)),
        ("kill", SECCOMP_RET_KILL_PROCESS),
    ):
        labels[label] = len(body)
        body.append(("ret", value, None, None, BPF_RET_K))

    def offset(position: int, label: str | None) -> int:
        if label is None:
            return 0  # fall through to the next instruction
        jump = labels[label] - position - 1
        if not 0 <= jump <= MAX_JUMP:
            raise AssertionError(f"seccomp filter jump of {jump} to {label!r} does not fit in a byte")
        return jump

    return [Instruction(code, offset(i, jt), offset(i, jf), k) for i, (_, k, jt, jf, code) in enumerate(body)]


def program_bytes(arch: str | None = None, *, also_denied: tuple[str, ...] = ()) -> bytes:
    """The filter as the kernel reads it: an array of struct sock_filter."""
    return b"".join(instruction.pack() for instruction in filter_instructions(arch, also_denied=also_denied))


def evaluate(instructions: list[Instruction], nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """What the filter returns for one call, by interpreting it in Python (tests use this)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    accumulator, pc = 0, 0
    while True:
        ins = instructions[pc]
        if ins.code == BPF_LD_W_ABS:
            accumulator = struct.unpack_from("=I", data, ins.k)[0]
            pc += 1
        elif ins.code == BPF_RET_K:
            return ins.k
        else:
            taken = {
                BPF_JEQ_K: accumulator == ins.k,
                BPF_JGE_K: accumulator >= ins.k,
                BPF_JSET_K: bool(accumulator & ins.k),
            }[ins.code]
            pc += 1 + (ins.jt if taken else ins.jf)
