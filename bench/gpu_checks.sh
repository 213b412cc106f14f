#!/usr/bin/env bash
# The GPU measurements of the "Performance" issue, as one prepared script for the device machine
# (one H200 or H100 with torch + transformers only: no verl, ray, vLLM, flash-attn, no network).
#
#   1. estimator cost, B=256 M=4 T=8192 float32 on cuda        -> estimator_cost_cuda.{json,md}
#   2. teacher prefill at M=1: 192 rollouts x 1 view, the same 287k useful tokens and 32768-token
#      micro-batches as step 3, no sweeps (only its peak memory is used) -> teacher_prefill_m1_cuda.json
#   3. teacher prefill, the H100 workload: Qwen3-1.7B shape, bf16, 64 rollouts x 3 views, 287k useful
#      tokens, packed with and without shared prefixes, a profile of the packed call, then its
#      sweeps (chunk size, token budget, share_prefix_min_tokens, attention backends)
#                                                             -> teacher_prefill_cuda.{json,md}
#   4. teacher peak memory of the packed path, M=3 over M=1 (target <= 1.15) -> teacher_memory_cuda.{json,md}
#
# Run in the repo root:   bash bench/gpu_checks.sh
# Every step runs under `timeout`, all together within GPU_CHECKS_SECONDS (default 480 s); a step cut
# short keeps what it had saved (teacher_prefill.py saves after every measurement). Results go to
# bench/results/ and, where $OUT is set (the device tool), are copied into $OUT with the full log.
# PYTHON picks the interpreter (default: python3, the one that holds torch on the device machine).

set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1

PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
RESULTS=bench/results
TOTAL_SECONDS=${GPU_CHECKS_SECONDS:-480}
M1_DIR=$(mktemp -d)  # teacher_prefill.py names its output by device only; the M=1 run writes here
FILES="estimator_cost_cuda.json estimator_cost_cuda.md teacher_prefill_cuda.json teacher_prefill_cuda.md
       teacher_prefill_m1_cuda.json teacher_memory_cuda.json teacher_memory_cuda.md"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ -n "${OUT:-}" ]; then
    exec > >(tee "$OUT/gpu_checks.log") 2>&1
fi
mkdir -p "$RESULTS"
for name in $FILES; do rm -f "$RESULTS/$name"; done  # a step that fails leaves no older result behind

copy_results() {
    if [ -n "${OUT:-}" ]; then  # the device tool brings back at most 8 files: these 7 and the log
        for name in $FILES; do
            if [ -f "$RESULTS/$name" ]; then cp "$RESULTS/$name" "$OUT/"; fi
        done
    fi
    rm -rf "$M1_DIR"
}
trap copy_results EXIT

# run_step NAME MAX_SECONDS COMMAND...: the command under timeout, within the time left in all.
run_step() {
    local name=$1 cap=$2
    shift 2
    local left=$((TOTAL_SECONDS - SECONDS))
    local limit=$((left < cap ? left : cap))
    if [ "$limit" -lt 20 ]; then
        echo "[gpu_checks] $name: skipped, ${left}s left"
        return 0
    fi
    echo "[gpu_checks] $name (at most ${limit}s): $*"
    timeout -k 10 "$limit" "$@"
    echo "[gpu_checks] $name: exit $? (124: stopped at its limit), ${SECONDS}s so far"
}

echo "[gpu_checks] $(date -u '+%F %T') UTC, $PYTHON, ${TOTAL_SECONDS}s in all"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, torch.cuda.get_device_name())" || exit 1

run_step "estimator cost" 90 "$PYTHON" bench/estimator_cost.py --device cuda
run_step "teacher prefill M=1" 150 \
    "$PYTHON" bench/teacher_prefill.py --device cuda --views 1 --rollouts 192 --no-sweep --no-profile --out "$M1_DIR"
if [ -f "$M1_DIR/teacher_prefill_cuda.json" ]; then
    cp "$M1_DIR/teacher_prefill_cuda.json" "$RESULTS/teacher_prefill_m1_cuda.json"
fi
run_step "teacher prefill M=3 + sweeps" 600 "$PYTHON" bench/teacher_prefill.py --device cuda

# The memory ratio, from the two teacher_prefill runs (same useful tokens, same token budget).
"$PYTHON" - "$RESULTS" <<'PY'
import json
import sys
from pathlib import Path

results = Path(sys.argv[1])
m3_path, m1_path = results / "teacher_prefill_cuda.json", results / "teacher_prefill_m1_cuda.json"
if not (m3_path.exists() and m1_path.exists()):
    sys.exit(f"[gpu_checks] no memory ratio: {m3_path.name} or {m1_path.name} is missing")
m3, m1 = json.loads(m3_path.read_text()), json.loads(m1_path.read_text())
methods = [m for m in m3["methods"] if m in m1["methods"]]
peaks = {m: {"m3": m3["methods"][m]["peak_memory_bytes"], "m1": m1["methods"][m]["peak_memory_bytes"]} for m in methods}
for entry in peaks.values():
    entry["ratio"] = entry["m3"] / entry["m1"] if entry["m1"] else None
packed = peaks.get("packed", {}).get("ratio")
report = {
    "summary": (
        f"teacher peak memory (cuda, {m3['versions']['gpu']}, {m3['config']['model']}, packed, token budget "
        f"{m3['config']['token_budget']}): M=3 {peaks['packed']['m3'] / 2**20:.0f} MiB vs M=1 "
        f"{peaks['packed']['m1'] / 2**20:.0f} MiB = {packed:.3f}x (target <= 1.15)"
        if packed is not None
        else "teacher peak memory: the packed method is missing from a run"
    ),
    "within_target": None if packed is None else packed <= 1.15,
    "peak_memory_bytes_above_weights": peaks,
    "m3": {"workload": m3["workload"], "config": m3["config"]},
    "m1": {"workload": m1["workload"], "config": m1["config"], "summary": m1["summary"]},
}
(results / "teacher_memory_cuda.json").write_text(json.dumps(report, indent=2) + "\n")
(results / "teacher_memory_cuda.md").write_text(report["summary"] + "\n")
print(report["summary"])
PY
echo "[gpu_checks] done after ${SECONDS}s"
