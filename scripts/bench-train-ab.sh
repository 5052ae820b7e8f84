#!/usr/bin/env bash
# A/B of the CPU training step under different settings, interleaved in one run (A B C A B C
# ...) so that a change in the machine's load hits every variant alike.
#
# Usage:
#   scripts/bench-train-ab.sh                 # the default variants below
#   ROUNDS=5 RUNS=3 scripts/bench-train-ab.sh
#   VARIANTS="base|X=1;nofused|LLMBS_NO_FUSED=1" scripts/bench-train-ab.sh
#
# Each variant is `name|ENV=VALUE ENV2=VALUE2 [--flag ...]`: environment assignments, then
# extra `llmbs bench llm` arguments; `BIN=/path` among them runs another binary (before/after,
# e.g. `before|BIN=../main/target/release/llmbs`). Every round runs each variant once (`--runs $RUNS` timed
# steps after a warm-up); the table gives the median over rounds of each run's median
# tokens/s and CPU seconds per step, with min-max.
#
# Environment: GGUF (default: the SmolLM2 GGUF of scripts/fetch-model.sh), BIN
# (target/release/llmbs), ROUNDS (3), RUNS (3), THREADS (2), BATCH (8), SEQ (128).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GGUF="${GGUF:-${LLMBS_CACHE:-$HOME/.cache/llmbs}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
BIN="${BIN:-$ROOT/target/release/llmbs}"
ROUNDS="${ROUNDS:-3}"
RUNS="${RUNS:-3}"
THREADS="${THREADS:-2}"
BATCH="${BATCH:-8}"
SEQ="${SEQ:-128}"
DEFAULT_VARIANTS="fused f32|X=1
fused bf16|X=1 --dtype bf16
composed f32 (LLMBS_NO_FUSED)|LLMBS_NO_FUSED=1
fused bf16, CANDLE_NUM_THREADS=1|CANDLE_NUM_THREADS=1 --dtype bf16
fused bf16, barrier spin 0|CANDLE_BARRIER_POOL_SPIN_LIMIT=0 --dtype bf16
fused bf16, malloc keeps freed memory|GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184 --dtype bf16
fused bf16, THP for malloc|GLIBC_TUNABLES=glibc.malloc.hugetlb=1 --dtype bf16"
VARIANTS="${VARIANTS:-$DEFAULT_VARIANTS}"

[ -x "$BIN" ] || { echo "bench-train-ab: no binary at $BIN (cargo build --release)" >&2; exit 3; }
[ -f "$GGUF" ] || { echo "bench-train-ab: model not found: $GGUF (scripts/fetch-model.sh)" >&2; exit 3; }

OUT="$ROOT/runs/bench-train-ab/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
mapfile -t LINES < <(printf '%s\n' "$VARIANTS" | tr ';' '\n' | sed '/^\s*$/d')
echo "[bench-train-ab] $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); ${#LINES[@]} variants x $ROUNDS rounds x $RUNS runs" >&2
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!LINES[@]}"; do
    name="${LINES[$i]%%|*}"
    spec="${LINES[$i]#*|}"
    envs=(); args=(); bin="$BIN"
    for w in $spec; do
      if [[ "$w" == BIN=* ]]; then bin="${w#BIN=}"
      elif [[ ${#args[@]} -eq 0 && "$w" == *=* && "$w" != --* ]]; then envs+=("$w"); else args+=("$w"); fi
    done
    echo "[bench-train-ab] round $round: $name" >&2
    env "${envs[@]}" "$bin" bench llm --model "$GGUF" --workload train --batch "$BATCH" --seq "$SEQ" \
      --runs "$RUNS" --threads "$THREADS" --device cpu --json "${args[@]}" 2>/dev/null \
      | grep '^{' | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["variant"]=sys.argv[1]; d["round"]=int(sys.argv[2]); d["load"]=open("/proc/loadavg").read().split()[0]; print(json.dumps(d))' "$name" "$round" \
      >> "$OUT/runs.jsonl" || echo "[bench-train-ab] $name failed" >&2
  done
done
python3 - "$OUT/runs.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
order = list(dict.fromkeys(r["variant"] for r in rows))
print(f"{'variant':<48} {'tokens/s':>9} {'(min-max)':>15} {'CPU-s/step':>10} {'loads':>12}")
base = None
for v in order:
    rs = [r for r in rows if r["variant"] == v]
    tps = [r["tokens_per_s"] for r in rs]
    cpu = [r.get("cpu_s_median", 0.0) for r in rs]
    med = statistics.median(tps)
    base = base or med
    loads = ",".join(r["load"] for r in rs)
    print(f"{v:<48} {med:>9.1f} {min(tps):>7.1f}-{max(tps):<7.1f} {statistics.median(cpu):>10.2f} {loads:>12}  ({med / base:.2f}x)")
EOF
echo "[bench-train-ab] runs in $OUT/runs.jsonl" >&2
