#!/usr/bin/env bash
# f32 against bf16 on this CPU (issue 22, item 6; docs/perf.md "bf16 on the CPU"): the
# layer-shaped GEMM by every kernel the CPU has, with each kernel's one-core instruction peak
# (`llmbs bench llm --workload gemm`), then the CPU recipe's training step (4 layers,
# item-vocabulary loss, dense SRT, batch 16, as configs/beauty-cpu.json) in f32, in bf16 on the
# VDPBF16PS kernel (LLMBS_NO_AMX=1) and in bf16 on AMX tiles where the CPU has them. The
# arms alternate RUNS times; it prints each arm's median tokens/s with min-max and the median
# of the per-round ratios to f32 (each ratio from the same round).
#
# Usage: RUNS=3 BASE=runs/beauty-cpu scripts/bench-bf16.sh
#   BASE: a run directory with embeddings/, index/ and behavior/ (any pipeline run at or past
#   its index stage, e.g. runs/beauty-smoke after scripts/quickstart.sh). Nothing else may run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
BASE="${BASE:-runs/beauty-cpu}"
DATA="${DATA:-../shared/data/beauty}"
STEPS="${STEPS:-12}"
BIN="${BIN:-target/release/llmbs}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
[ -d "$BASE/index" ] || { echo "bench-bf16: $BASE has no index/ (run the pipeline to its index stage)" >&2; exit 2; }

echo "== GEMM [1024 x 576] x [576 x 1536]^T, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
"$BIN" bench llm --workload gemm --random-weights --batch 4 --seq 256 --runs 9 --json \
  | tee "$OUT/gemm.json"

arms=(f32 bf16-avx512)
"$BIN" bench llm --workload gemm --random-weights --batch 1 --seq 32 --runs 1 --json \
  | grep -q '"bf16_kernel":"amx"' && arms+=(bf16-amx)
for r in $(seq "$RUNS"); do
  for arm in "${arms[@]}"; do
    run="$OUT/$arm-$r"
    mkdir -p "$run"
    for d in embeddings index behavior; do ln -s "$(realpath "$BASE/$d")" "$run/$d"; done
    dtype=bf16; env=()
    case "$arm" in
      f32) dtype=f32 ;;
      bf16-avx512) env=(LLMBS_NO_AMX=1) ;;
    esac
    env ${env[@]+"${env[@]}"} "$BIN" train --stage initial --run "$run" --data "$DATA" \
      --layers 4 --item-loss --srt-dense --mix srt=4 --batch-size 16 --micro-batch 8 \
      --lr 2e-3 --warmup-steps 20 --seed 0 --dtype "$dtype" \
      --steps "$STEPS" --eval-every 1000 --valid-users 0 --max-minutes 10 \
      >/dev/null 2>"$run.err" || { cat "$run.err" >&2; exit 1; }
    python3 -c "
import json; r = json.load(open('$run/train/initial/report.json'))
print('$r\t$arm\t%.1f' % r['median_tokens_per_s'])" | tee -a "$OUT/steps.tsv"
  done
done
python3 - "$OUT/steps.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by = {}
for rnd, arm, tps in rows:
    by.setdefault(arm, {})[rnd] = float(tps)
print("== training step (4 layers, item-vocabulary loss, batch 16), tokens/s")
print("arm\tmedian\tmin-max\tratio to f32 (median of rounds, min-max)")
for arm, v in by.items():
    xs = list(v.values())
    ratios = [v[r] / by["f32"][r] for r in v if r in by["f32"]]
    print(f"{arm}\t{statistics.median(xs):.0f}\t{min(xs):.0f}-{max(xs):.0f}\t"
          f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
PY
