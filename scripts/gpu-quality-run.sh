#!/usr/bin/env bash
# The quality run of issue 15 in one device call: Beauty, the full pipeline after the index, one
# GPU, the test users. Z^s embedded on the device (unless RUN_SEED carries it), the fused
# training kernels checked against the composed ops, the initial stage (dense SRT + the other
# tasks, GCT on, bf16 compute over f32 weights) for TRAIN_MINUTES, the anneal stage, then `llmbs
# eval` with the adapter on and off side by side (beam 20) in whatever time is left before
# DEADLINE_S, each over every test user or, when time runs out, a seeded random sample of them
# (`--max-minutes`, the report says how many), and the baselines on all test users.
# OUTDIR/quality.json (rewritten after every stage, copied to RESULTS each time): tokens/s, MFU,
# peak GPU memory, wall time of each stage, both eval reports; RESULTS also gets log.txt and, at
# the end, quality-results.tgz (train reports, logs, curves, eval reports, gzipped predictions).
#
# Usage: scripts/gpu-quality-run.sh OUTDIR [RESULTS]
# Needs: BIN (default dev-carry/llmbs, unpacked by scripts/device-check.sh), GGUF (the model),
# DATA (Beauty), RUN_SEED (a folder holding index/*.index.json and embeddings/behavior.safetensors
# [.gz], optionally embeddings/semantic.safetensors[.gz]: the CPU run's `llmbs pipeline --config
# beauty --to index` = runs/beauty).
# Dry run on the CPU:
#   DEVICE=cpu DTYPE=f32 BIN=target/release/llmbs GGUF=$(scripts/fetch-model.sh) \
#   DATA=../shared/data/beauty RUN_SEED=runs/beauty TRAIN_STEPS=2 TRAIN_BATCH=4 TRAIN_MICRO=2 \
#   TRAIN_EVAL_EVERY=2 VALID_USERS=8 ANNEAL_STEPS=2 EVAL_BATCH=16 CHECK_MODEL=synthetic:tiny \
#   DEADLINE_S=900 scripts/gpu-quality-run.sh /tmp/qr-dry
# Knobs: DEVICE (cuda), DTYPE (bf16), TRAIN_STEPS (300: the cosine's length), TRAIN_MINUTES (4),
# TRAIN_BATCH (128), TRAIN_MICRO (32), TRAIN_LR (2e-4), TRAIN_MIX (srt=4), TRAIN_DENSE
# (--srt-dense; empty = the paper's one sample per prefix), TRAIN_EVAL_EVERY (100), VALID_USERS
# (1000), ANNEAL_STEPS (30), ANNEAL_LR (5e-4), EVAL_BATCH (128), EVAL_LIMIT (all users),
# EVAL_EXTRA (more `llmbs eval` flags, e.g. "--scoring choices"), EVAL_PARALLEL (1: adapter on
# and off at once; beam search on the GPU is bound by host work, so two processes overlap),
# DEADLINE_S (570: seconds from the start by which everything must be written; the device call's
# limit is 600), PEAK_TFLOPS (989: H100/H200 bf16 dense), CHECK_MODEL (synthetic:smollm2-135m:
# the fused-kernel check's model; synthetic:tiny for a quick CPU dry run).
set -uo pipefail
OUT="${1:?usage: scripts/gpu-quality-run.sh OUTDIR [RESULTS]}"
RESULTS="${2:-}"
mkdir -p "$OUT" ${RESULTS:+"$RESULTS"}
BIN="${BIN:-dev-carry/llmbs}"
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-bf16}"
DEADLINE_S="${DEADLINE_S:-570}"
: "${GGUF:?GGUF: the model file}" "${DATA:?DATA: the Beauty folder}" "${RUN_SEED:?RUN_SEED: index + embeddings}"
R="$OUT/run"
T0=$(date +%s)
log() { echo "[quality $(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/log.txt" >&2; }
stamp() { date +%s.%N; }
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

mkdir -p "$R/index" "$R/embeddings"
cp "$RUN_SEED"/index/*.index.json "$R/index/"
for f in semantic behavior; do
  if [ -f "$RUN_SEED/embeddings/$f.safetensors.gz" ]; then
    gunzip -c "$RUN_SEED/embeddings/$f.safetensors.gz" > "$R/embeddings/$f.safetensors"
  elif [ -f "$RUN_SEED/embeddings/$f.safetensors" ]; then
    cp "$RUN_SEED/embeddings/$f.safetensors" "$R/embeddings/"
  fi
done
log "run seeded: $(ls "$R/index" "$R/embeddings" | tr '\n' ' ')"

# Peak GPU memory: nvidia-smi sampled every second while the stages run.
if [ "$DEVICE" != cpu ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 1000 \
    > "$OUT/gpu-memory.csv" 2>/dev/null &
  SMI=$!
  trap 'kill $SMI 2>/dev/null' EXIT
fi

: > "$OUT/stage-seconds.txt"
run_stage() {  # name, then the command
  local name=$1; shift
  local t0; t0=$(stamp)
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local s; s=$(awk -v a="$t0" -v b="$(stamp)" 'BEGIN { printf "%.1f", b - a }')
  echo "$name $s" >> "$OUT/stage-seconds.txt"
  log "$name rc=$rc in $s s"
  return $rc
}
summarize() {
  python3 "$HERE/quality-summary.py" "$OUT" "${PEAK_TFLOPS:-989}" > "$OUT/quality.json.tmp" \
    && mv "$OUT/quality.json.tmp" "$OUT/quality.json"
  [ -n "$RESULTS" ] && cp "$OUT/quality.json" "$OUT/log.txt" "$RESULTS/"
  return 0
}

# Z^s on the device when the seed run does not carry it (it is 26 MB gzipped; embedding 12,101
# items takes seconds on a GPU), with the CPU run's settings (max 256 tokens, f32).
if [ ! -f "$R/embeddings/semantic.safetensors" ]; then
  run_stage embed "$BIN" embed --data "$DATA" --model "$GGUF" --device "$DEVICE" --dtype f32 \
    --batch 64 --max-tokens 256 --out "$R/embeddings/semantic.safetensors"
fi

. "$HERE/fused-check.sh"
if fused_check; then
  log "fused kernels agree with the composed ops"
else
  export LLMBS_NO_FUSED=1
  log "fused kernels DISAGREE (or crashed): training with the composed ops"
fi
summarize

run_stage train_initial "$BIN" train --stage initial --run "$R" --data "$DATA" --model "$GGUF" \
  --device "$DEVICE" --dtype "$DTYPE" --steps "${TRAIN_STEPS:-300}" --max-minutes "${TRAIN_MINUTES:-4}" \
  --batch-size "${TRAIN_BATCH:-128}" --micro-batch "${TRAIN_MICRO:-32}" --lr "${TRAIN_LR:-2e-4}" \
  --warmup-steps 10 --eval-every "${TRAIN_EVAL_EVERY:-100}" --valid-users "${VALID_USERS:-1000}" \
  --mix "${TRAIN_MIX:-srt=4}" ${TRAIN_DENSE---srt-dense}
log "initial: $(sed -n 3p "$R/train/initial/report.md" 2>/dev/null)"
summarize
run_stage train_anneal "$BIN" train --stage anneal --run "$R" --device "$DEVICE" --dtype "$DTYPE" \
  --steps "${ANNEAL_STEPS:-30}" --batch-size "${TRAIN_BATCH:-128}" --micro-batch "${TRAIN_MICRO:-32}" \
  --lr "${ANNEAL_LR:-5e-4}" --warmup-steps 3 --eval-every 15 --valid-users "${VALID_USERS:-1000}"
summarize

# What is left, less ~40 s for loading, the final batches' round, the baselines and the packing.
EVAL_MIN=$(awk -v s="$(left)" 'BEGIN { m = (s - 40) / 60; printf "%.2f", (m < 0.25 ? 0.25 : m) }')
log "eval budget: $EVAL_MIN min of beam search each"
LIMIT=${EVAL_LIMIT:+--limit $EVAL_LIMIT}
eval_one() {
  run_stage "eval_adapter_$1" "$BIN" eval --run "$R" --split test --adapter "$1" \
    --batch "${EVAL_BATCH:-128}" --device "$DEVICE" --dtype f32 --seed 1 --max-minutes "$EVAL_MIN" \
    $LIMIT ${EVAL_EXTRA:-}
}
if [ "${EVAL_PARALLEL:-1}" = 1 ]; then
  eval_one on & P1=$!
  eval_one off & P2=$!
  wait $P1; wait $P2
else
  eval_one on; eval_one off
fi
for adapter in on off; do
  log "eval adapter $adapter: $(grep -m1 -A2 'R@1' "$OUT/eval_adapter_$adapter.log" | tail -1)"
done
# Baselines on exactly the users each evaluation ranked: a time-limited evaluation's users are
# the first N of the seeded order, the users of `--limit N --seed 1` (tests/run.rs checks it).
"$BIN" baselines --run "$R" --split test --seed 1 $LIMIT > "$OUT/baselines.log" 2>&1
if [ -z "${EVAL_LIMIT:-}" ]; then
  for n in $(python3 - "$R" <<'PY'
import glob, json, sys
ns = set()
for p in glob.glob(f"{sys.argv[1]}/eval/test-*.json"):
    r = json.load(open(p))
    if r.get("users", 0) < r.get("planned_users", 0):
        ns.add(r["users"])
print(" ".join(map(str, sorted(ns))))
PY
  ); do
    "$BIN" baselines --run "$R" --split test --seed 1 --limit "$n" >> "$OUT/baselines.log" 2>&1
  done
fi
[ -n "${SMI:-}" ] && kill "$SMI" 2>/dev/null
summarize
log "quality.json written"
if [ -n "$RESULTS" ]; then
  for f in "$R"/eval/*.predictions.jsonl; do gzip -f "$f"; done
  tar czf "$RESULTS/quality-results.tgz" -C "$OUT" run/train run/eval log.txt stage-seconds.txt \
    $(cd "$OUT" && ls *.log gpu-memory.csv fused-check* 2>/dev/null)
  cp "$OUT/quality.json" "$OUT/log.txt" "$RESULTS/"
fi
