#!/usr/bin/env bash
# The SIMD paths of the fused ops (llm::ops::vmath: exp, max, SiLU) on the CPU recipe's
# training step (4 layers, item-vocabulary loss, dense SRT, batch 16 / micro-batch 8, f32, as
# scripts/bench-bf16.sh), each path forced by LLMBS_SIMD. The arms alternate ROUNDS times
# (scalar avx2 [avx512] scalar avx2 ...); it prints each arm's median tokens/s with min-max
# and the median of the per-round ratios to scalar (each ratio from the same round).
#
# Usage: ROUNDS=3 BASE=runs/beauty-cpu scripts/bench-simd.sh
#   BASE: a run directory with embeddings/, index/ and behavior/ (as scripts/bench-bf16.sh).
#   Without one, a run with the published LETTER index of Beauty is made and GCT is off
#   (--lambda-s 0 --lambda-b 0: it needs the embeddings); the step is otherwise the recipe's.
#   Nothing else may run on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
BASE="${BASE:-runs/beauty-cpu}"
DATA="${DATA:-../shared/data/beauty}"
STEPS="${STEPS:-12}"
BIN="${BIN:-target/release/llmbs}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

links=(embeddings index behavior)
gct=()
if [ ! -d "$BASE/index" ]; then
  echo "bench-simd: $BASE has no index/: LETTER index, GCT off" >&2
  BASE="$OUT/base"
  "$BIN" index --external "$DATA/Beauty.letter-index.json" --data "$DATA" \
    --out "$BASE/index/Beauty.index.json" >/dev/null
  links=(index)
  gct=(--lambda-s 0 --lambda-b 0)
fi

arms=(scalar avx2)
grep -qw avx512f /proc/cpuinfo && arms+=(avx512)
for arm in "${arms[@]}"; do
  # The path that runs, as the binary reports it (a path the CPU lacks falls back).
  got=$(LLMBS_SIMD="$arm" "$BIN" bench llm --workload gemm --random-weights --batch 1 --seq 32 \
    --runs 1 --json 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["simd_path"])')
  [ "$got" = "$arm" ] || { echo "bench-simd: LLMBS_SIMD=$arm runs $got" >&2; exit 1; }
done
echo "== $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) CPUs; arms: ${arms[*]}"

for r in $(seq "$ROUNDS"); do
  for arm in "${arms[@]}"; do
    run="$OUT/$arm-$r"
    mkdir -p "$run"
    for d in "${links[@]}"; do ln -s "$(realpath "$BASE/$d")" "$run/$d"; done
    LLMBS_SIMD="$arm" "$BIN" train --stage initial --run "$run" --data "$DATA" \
      --layers 4 --item-loss --srt-dense --mix srt=4 --batch-size 16 --micro-batch 8 \
      --lr 2e-3 --warmup-steps 20 --seed 0 --dtype f32 ${gct[@]+"${gct[@]}"} \
      --steps "$STEPS" --eval-every 1000 --valid-users 0 --max-minutes 10 \
      >/dev/null 2>"$run.err" || { cat "$run.err" >&2; exit 1; }
    python3 -c "
import json; r = json.load(open('$run/train/initial/report.json'))
print('$r\t$arm\t%.1f\t%s' % (r['median_tokens_per_s'], open('/proc/loadavg').read().split()[0]))" \
      | tee -a "$OUT/steps.tsv"
  done
done
python3 - "$OUT/steps.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
by = {}
for rnd, arm, tps, _load in rows:
    by.setdefault(arm, {})[rnd] = float(tps)
print("== training step (4 layers, item-vocabulary loss, batch 16, f32), tokens/s")
print("arm\tmedian\tmin-max\tratio to scalar (median of rounds, min-max)")
for arm, v in by.items():
    xs = list(v.values())
    ratios = [v[r] / by["scalar"][r] for r in v if r in by["scalar"]]
    print(f"{arm}\t{statistics.median(xs):.0f}\t{min(xs):.0f}-{max(xs):.0f}\t"
          f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
PY
