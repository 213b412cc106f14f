"""Benchmark: how many sandboxed programs per second this machine runs, per isolation and pool size.

Workloads (every program is run through `Sandbox.run_many` / `run_feedback`, i.e. the
same path the rewards and the feedback view take):

  hello     `print(input())`: the fixed cost of one sandboxed run (start-up, isolation, teardown)
  cpu_0.1s  a pure-Python loop of about 0.1 s of CPU: how the pool shares the cores
  cpp       compile + run a small C++ program (only where g++ is installed)
  feedback  run_feedback over a batch of 16 responses with 2 public tests each

plus `bare_python`, the same `hello` program started with subprocess and no sandbox at all, to
show what isolation costs. Each workload runs at max_concurrent 1, 2 and 4 for every isolation
that works here. Throughput = programs (or responses) / wall seconds; latency percentiles are
per program inside the batch.

  python bench/sandbox_throughput.py            # about two minutes on 2 cores
  python bench/sandbox_throughput.py --quick    # fewer programs, for a smoke run

Writes bench/results/sandbox_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from verl_avsd.feedback_view import run_feedback
from verl_avsd.sandbox import Limits, Sandbox
from verl_avsd.sandbox.runner import working_isolations

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "sandbox_throughput.json"
LIMITS = Limits(time_limit_s=5.0, memory_mb=256)

HELLO = "print(input())"
CPU_LOOP = "x = 0\nfor i in range(1_000_000):\n    x += i\nprint(x % 7)"
CPP = "#include <iostream>\nint main(){long long a;std::cin>>a;std::cout<<a*a<<std::endl;}"
PUBLIC_TESTS = json.dumps({"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]})
RESPONSES = [
    "```python\na, b = map(int, input().split())\nprint(a + b)\n```",  # passes
    "```python\na, b = map(int, input().split())\nprint(a * b)\n```",  # wrong answer
    "```python\nprint(1 / 0)\n```",  # crash
    "I think we add the numbers.",  # no program
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure_runs(sandbox: Sandbox, code: str, language: str, count: int) -> dict:
    programs = [(code, str(i)) for i in range(count)]
    started = time.monotonic()
    results = sandbox.run_many(programs, language=language, limits=LIMITS)  # C++: compile + run each
    wall = time.monotonic() - started
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"benchmark program failed: {failed[0]}")
    latencies = [r.wall_time_s for r in results]
    return {
        "programs": count,
        "wall_s": round(wall, 3),
        "programs_per_s": round(count / wall, 2),
        "latency_p50_s": round(percentile(latencies, 0.5), 4),
        "latency_p95_s": round(percentile(latencies, 0.95), 4),
        "cpu_s_mean": round(statistics.mean(r.cpu_time_s for r in results), 4),
    }


def measure_feedback(sandbox: Sandbox, batch: int) -> dict:
    responses = [RESPONSES[i % len(RESPONSES)] for i in range(batch)]
    started = time.monotonic()
    views = [f.text for f in run_feedback(responses, [PUBLIC_TESTS] * batch, time_limit_s=5, memory_mb=256, sandbox=sandbox)]
    wall = time.monotonic() - started
    return {
        "responses": batch,
        "views": sum(v is not None for v in views),
        "wall_s": round(wall, 3),
        "responses_per_s": round(batch / wall, 2),
    }


def measure_bare_python(count: int) -> dict:
    started = time.monotonic()
    for i in range(count):
        subprocess.run([sys.executable, "-I", "-S", "-c", HELLO], input=str(i), capture_output=True, text=True, check=True)
    wall = time.monotonic() - started
    return {"programs": count, "wall_s": round(wall, 3), "programs_per_s": round(count / wall, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer programs per workload")
    parser.add_argument("--pools", default="1,2,4", help="max_concurrent values to try")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    scale = 0.25 if args.quick else 1.0
    counts = {"hello": int(48 * scale), "cpu_0.1s": int(24 * scale), "cpp": max(2, int(6 * scale)), "feedback": 16}
    pools = [int(p) for p in args.pools.split(",")]

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "root": os.geteuid() == 0,
        },
        "isolations": working_isolations(),
        "limits": {"time_limit_s": LIMITS.time_limit_s, "memory_mb": LIMITS.memory_mb},
        "bare_python": measure_bare_python(counts["hello"]),
        "results": {},
    }
    for isolation, state in report["isolations"].items():
        if state != "ok":
            continue
        for pool in pools:
            sandbox = Sandbox(isolation, max_concurrent=pool)
            report.setdefault("bounded_by", {})[isolation] = sandbox.backend.limits_description
            row = {
                "hello": measure_runs(sandbox, HELLO, "python", counts["hello"]),
                "cpu_0.1s": measure_runs(sandbox, CPU_LOOP, "python", counts["cpu_0.1s"]),
                "feedback": measure_feedback(sandbox, counts["feedback"]),
            }
            if shutil.which("g++"):
                row["cpp"] = measure_runs(sandbox, CPP, "cpp", counts["cpp"])
            sandbox.close()
            report["results"][f"{isolation}/pool{pool}"] = row
            print(f"{isolation:8s} pool={pool}: " + ", ".join(
                f"{name} {v.get('programs_per_s', v.get('responses_per_s'))}/s" for name, v in row.items()
            ), flush=True)  # fmt: skip
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"bare python (no sandbox): {report['bare_python']['programs_per_s']}/s; wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
