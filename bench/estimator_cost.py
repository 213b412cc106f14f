"""Benchmark: what the AVSD estimator and its metrics cost per training step.

Per step the AVSD trainer runs, after the teacher has scored every rollout under each view,

    advantages, signals = verl_avsd.estimators.token_advantages(estimator, ...)   # [B, T]
    signal_metrics(signals) + credit_metrics(advantages, ...)                     # avsd/*, credit/*

This script times exactly those calls, for every teacher estimator (avsd, opsd, avsd_consensus,
avsd_arithmetic, rlsd), on one batch shaped like a large training step (default B=256 rollouts,
M=4 views, T=8192 response positions, float32) with realistic values: log-probs in [-10, 0],
ragged response lengths, some views missing, a few non-finite teacher values. It reports
milliseconds per call (median of --repeats after --warmup calls; CUDA synchronized), peak
memory, and, given a measured training step time, the estimator's share of the step (target:
< 1%).

    python bench/estimator_cost.py --device cpu             # full size, 1 torch thread
    python bench/estimator_cost.py --device cuda
    python bench/estimator_cost.py --step-seconds 41.2      # share of a 41.2 s step
    python bench/estimator_cost.py --step-metrics RUN/verl_metrics.jsonl   # median timing_s/step

`verl_avsd.estimators` imports verl (the rlsd estimator reuses verl's GRPO advantage). Where verl
is not installed (the GPU device machine has only torch + transformers) the script times the
same math through `verl_avsd.signals` directly, with rlsd's GRPO sequence advantage computed
beforehand, and records which path it took in the JSON (`config.path`).

Peak memory: CUDA max_memory_allocated above the inputs; on CPU the tensor bytes of the inputs
and the peak resident-set growth during one call (tracemalloc does not see torch's allocations).
Writes bench/results/estimator_cost_<device>.json and a one-line .md.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:  # imported from a test rather than run as a script
    sys.path.insert(0, str(BENCH))
try:
    import verl_avsd  # noqa: F401  the installed project
except ImportError:  # a bare checkout (the GPU machine): the package folder sits in the repo root
    sys.path.insert(0, str(REPO))

from teacher_prefill import PeakRSS  # bench/teacher_prefill.py: a thread that samples the RSS

from verl_avsd.estimator_facts import teacher_estimators  # plain data, no imports
from verl_avsd.metrics import credit_metrics, signal_metrics  # pure torch, like signals
from verl_avsd.signals import avsd_signals, rlsd_advantage

try:
    from verl_avsd.config import avsd_config
    from verl_avsd.estimators import token_advantages
except ImportError as error:  # verl (or omegaconf) missing: time verl_avsd.signals directly
    token_advantages, VERL_MISSING = None, f"{type(error).__name__}: {error}"
else:
    VERL_MISSING = None

GROUP_SIZE = 4  # rollouts per prompt: rlsd's GRPO advantage needs groups
WRONG_BELOW, CREDIT_TOP_K, GATE_OPEN = 1.0, 20, 0.5  # the defaults in verl_avsd/config/avsd.yaml


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def make_inputs(batch: int, views: int, length: int, seed: int, device: torch.device) -> dict:
    """One step's estimator inputs, padded as the trainer passes them (0 outside the response)."""
    g = torch.Generator().manual_seed(seed)
    # Ragged responses: most end early, an eighth hit the length limit (truncated rollouts).
    lengths = torch.randint(max(1, length // 16), length + 1, (batch,), generator=g)
    lengths[: max(1, batch // 8)] = length
    response_mask = torch.arange(length)[None, :] < lengths[:, None]  # [B, T] bool

    # The student's log-prob of its own sampled token: mostly confident, a tail down to -10.
    student = -torch.empty(batch, length).exponential_(2.0, generator=g).clamp_max(10.0)  # [B, T]
    # Each view's teacher moves around the student's value, more for some views than others.
    spread = torch.linspace(0.3, 1.5, views)[None, :, None]  # [1, M, 1]
    noise = torch.randn(batch, views, length, generator=g) * spread
    teacher = (student[:, None, :] + noise).clamp(-10.0, 0.0)  # [B, M, T]
    # A few teacher values the teacher could not score (dropped like a missing view).
    nonfinite = torch.rand(batch, views, length, generator=g) < 1e-4
    teacher[nonfinite] = torch.where(torch.rand(int(nonfinite.sum()), generator=g) < 0.5, -torch.inf, torch.nan)
    student = torch.where(response_mask, student, 0.0)
    teacher = torch.where(response_mask[:, None, :], teacher, 0.0)

    # 10% of (rollout, view) pairs missing; the first view ("full") is always there, as in math data.
    view_mask = torch.rand(batch, views, generator=g) > 0.1  # [B, M]
    view_mask[:, 0] = True

    # Outcome reward 0/1 on the last response token (verl's token_level_rewards), groups of prompts.
    reward = (torch.rand(batch, generator=g) < 0.4).float()  # [B]
    token_level_rewards = torch.zeros(batch, length)
    token_level_rewards[torch.arange(batch), lengths - 1] = reward
    index = np.array([f"prompt{b // GROUP_SIZE}" for b in range(batch)], dtype=object)  # uids, as the trainer

    tensors = {
        "student_logp": student,
        "view_logq": teacher,
        "view_mask": view_mask,
        "response_mask": response_mask.long(),  # verl's response_mask is an integer tensor
        "token_level_rewards": token_level_rewards,
        "sequence_reward": reward,
        "rlsd_sequence_advantage": group_normalized(reward, GROUP_SIZE),
    }
    tensors = {name: t.to(device) for name, t in tensors.items()}
    return {
        **tensors,
        "index": index,
        "stats": {
            "tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
            "response_tokens": int(response_mask.sum()),
            "views_missing": int((~view_mask).sum()),
            "nonfinite_teacher_values": int((nonfinite & view_mask[:, :, None] & response_mask[:, None, :]).sum()),
        },
    }


def group_normalized(reward: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's sequence advantage (reward minus the group mean, over the group std), only for the
    path without verl, whose rlsd then starts from it (with verl, token_advantages computes it)."""
    groups = reward.view(-1, group_size)  # [B / G, G]
    return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)).view(-1)


# --------------------------------------------------------------------------------------------
# The calls that are timed
# --------------------------------------------------------------------------------------------


def estimator_calls(inputs: dict, views: int) -> dict[str, Callable[[], tuple]]:
    """Estimator name -> a call returning (advantages [B, T], signals), as the trainer makes it."""
    names = [f"view{m}" for m in range(views)]
    student, logq, view_mask, resp = (inputs[k] for k in ("student_logp", "view_logq", "view_mask", "response_mask"))
    if token_advantages is not None:
        # parsed once, as the trainer does (the estimator reads the AvsdConfig, no parsing per step)
        config = avsd_config({"avsd": {"views": names, "opsd_view": names[0]}})

        kwargs = {
            "student_logp": student,
            "view_logq": logq,
            "view_mask": view_mask,
            "response_mask": resp,
            "token_level_rewards": inputs["token_level_rewards"],  # rlsd only
            "index": inputs["index"],  # rlsd only
        }
        return {name: functools.partial(token_advantages, name, config, **kwargs) for name in teacher_estimators()}

    # Without verl: the same math through verl_avsd.signals (what token_advantages runs inside).
    def avsd_field(field):
        def run():
            signals = avsd_signals(student, logq, view_mask, resp)
            return getattr(signals, field), signals

        return run

    def opsd():  # token_advantages reads the opsd view as an M = 1 batch
        signals = avsd_signals(student, logq[:, :1], view_mask[:, :1], resp)
        return signals.advantage, signals

    def rlsd():
        signals = avsd_signals(student, logq, view_mask, resp)
        return rlsd_advantage(inputs["rlsd_sequence_advantage"], signals.consensus, resp), signals

    return {
        "avsd": avsd_field("advantage"),
        "avsd_consensus": avsd_field("consensus"),
        "avsd_arithmetic": avsd_field("arithmetic"),
        "opsd": opsd,
        "rlsd": rlsd,
    }


def metrics_call(inputs: dict, advantages: torch.Tensor, signals) -> Callable[[], dict]:
    """The per-step metrics the trainer logs after the estimator."""

    def run():
        out = signal_metrics(signals, GATE_OPEN)
        resp, reward = inputs["response_mask"], inputs["sequence_reward"]
        out.update(credit_metrics(advantages, resp, reward, WRONG_BELOW, CREDIT_TOP_K))
        return out

    return run


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc), so that one call's peak-RSS growth is not hidden
    by memory an earlier call freed but the process kept."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS numbers are then lower bounds
        pass


def measure(call: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median wall and process-CPU milliseconds of `repeats` calls after `warmup` calls, and the
    peak memory of one call (CUDA: max_memory_allocated above what was allocated before it)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    if cuda:
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        sync()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        release_freed_memory()
        with PeakRSS() as rss:  # a separate call: the sampler thread would disturb the timed ones
            call()
        peak = rss.above_start
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        call()
        sync()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return {
        "ms": 1000 * statistics.median(wall),
        "cpu_ms": 1000 * statistics.median(cpu),
        "ms_min": 1000 * min(wall),
        "peak_memory_bytes": peak,
    }


# --------------------------------------------------------------------------------------------
# The share of a training step
# --------------------------------------------------------------------------------------------


def step_seconds_from_metrics(path: str | os.PathLike, warmup_steps: int = 1) -> float:
    """Median `timing_s/step` of a run's verl_metrics.jsonl, without its first (warm-up) steps."""
    from verl_avsd.run_files import read_metrics_file  # needs omegaconf: only when a metrics file is given

    steps = read_metrics_file(path)
    times = [steps[s]["timing_s/step"] for s in sorted(steps) if "timing_s/step" in steps[s]]
    if not times:
        raise SystemExit(f"--step-metrics {path}: no timing_s/step in it")
    return statistics.median(times[warmup_steps:] or times)


def step_shares(calls: dict[str, dict], step_seconds: float) -> dict[str, float]:
    """Per estimator: (estimator + metrics) milliseconds as a fraction of one training step."""
    metrics_ms = calls["metrics"]["ms"]
    return {name: (entry["ms"] + metrics_ms) / (1000 * step_seconds) for name, entry in calls.items() if name != "metrics"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=256, help="rollouts B (a multiple of 4: rlsd groups)")
    parser.add_argument("--views", type=int, default=4, help="views M")
    parser.add_argument("--length", type=int, default=8192, help="response positions T")
    parser.add_argument("--warmup", type=int, help="untimed calls first; default 3 on cuda, 1 on cpu")
    parser.add_argument("--repeats", type=int, help="timed calls (median); default 20 on cuda, 5 on cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: stabler on a shared box)")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--step-seconds", type=float, help="a measured training step time (e.g. timing_s/step)")
    step.add_argument("--step-metrics", type=Path, help="a run's verl_metrics.jsonl: its median timing_s/step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    if args.batch % GROUP_SIZE:
        raise SystemExit(f"--batch must be a multiple of {GROUP_SIZE} (rlsd's prompt groups)")
    torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    repeats = args.repeats or (20 if cuda else 5)

    inputs = make_inputs(args.batch, args.views, args.length, args.seed, device)
    path = "verl_avsd.estimators.token_advantages" if token_advantages is not None else "verl_avsd.signals"
    print(
        f"estimator cost on {args.device} ({path}): B={args.batch} M={args.views} T={args.length}, "
        f"inputs {inputs['stats']['tensor_bytes'] / 2**20:.0f} MiB, {inputs['stats']['response_tokens']} response "
        f"tokens, warm-up {warmup}, median of {repeats}",
        flush=True,
    )

    calls = {}
    for name, call in estimator_calls(inputs, args.views).items():
        calls[name] = measure(call, device, warmup, repeats)
        peak_mib = calls[name]["peak_memory_bytes"] / 2**20
        print(f"  {name:16s} {calls[name]['ms']:9.2f} ms  peak {peak_mib:7.1f} MiB", flush=True)
    advantages, signals = estimator_calls(inputs, args.views)["avsd"]()
    calls["metrics"] = measure(metrics_call(inputs, advantages, signals), device, warmup, repeats)
    print(f"  {'metrics':16s} {calls['metrics']['ms']:9.2f} ms  (signal_metrics + credit_metrics)", flush=True)
    del advantages, signals

    step_seconds, step_source = None, None
    if args.step_seconds is not None:
        step_seconds, step_source = args.step_seconds, "--step-seconds"
    elif args.step_metrics is not None:
        step_seconds, step_source = step_seconds_from_metrics(args.step_metrics), str(args.step_metrics)
    shares = step_shares(calls, step_seconds) if step_seconds else None

    report = {
        "summary": None,
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "device_name": torch.cuda.get_device_name() if cuda else cpu_name(),
            "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
        "config": {
            "device": args.device,
            "batch": args.batch,
            "views": args.views,
            "length": args.length,
            "dtype": "float32",
            "warmup": warmup,
            "repeats": repeats,
            "seed": args.seed,
            "path": path,
            "verl_missing": VERL_MISSING,
        },
        "inputs": inputs["stats"],
        "memory_kind": "cuda max_memory_allocated above the inputs" if cuda else "peak RSS growth during one call",
        "calls": calls,
        "step_seconds": step_seconds,
        "step_seconds_source": step_source,
        "share_of_step": shares,  # (estimator + metrics) / step, per estimator
    }
    avsd_ms = calls["avsd"]["ms"] + calls["metrics"]["ms"]
    report["summary"] = (
        f"estimator cost ({args.device}, {report['versions']['device_name']}, {torch.get_num_threads()} thread(s), "
        f"B={args.batch} M={args.views} T={args.length} float32, {path}): "
        + ", ".join(f"{name} {calls[name]['ms']:.1f} ms" for name in calls)
        + f"; avsd + metrics {avsd_ms:.1f} ms per step"
        + (f" = {100 * shares['avsd']:.2f}% of a {step_seconds:.2f} s step" if shares else "")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"estimator_cost_{args.device}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"estimator_cost_{args.device}.md").write_text(report["summary"] + "\n")
    print(report["summary"], flush=True)
    return report


if __name__ == "__main__":
    main()
