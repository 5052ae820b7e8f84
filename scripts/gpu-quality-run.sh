#!/usr/bin/env bash
# The quality run of issue 15: Beauty, the full pipeline after the index, one GPU, every test user.
# The initial stage (dense SRT + the other tasks, GCT on, bf16 compute over f32 weights) for
# TRAIN_MINUTES, the anneal stage, then `llmbs eval` of all test users with the adapter on and off
# (beam 20) and the baselines on the same users. Writes OUTDIR/quality.json (tokens/s, MFU, peak
# GPU memory, wall time of each stage, both eval reports) and, into RESULTS, quality.json,
# log.txt and quality-results.tgz (train reports, logs, curves, eval reports; predictions gzipped).
#
# Usage: scripts/gpu-quality-run.sh OUTDIR [RESULTS]
# Needs: BIN (default dev-carry/llmbs, unpacked by scripts/device-check.sh), GGUF (the model),
# DATA (Beauty), RUN_SEED (a folder holding index/ and embeddings/{semantic,behavior}.safetensors,
# the CPU run's: `llmbs pipeline --config beauty --to index` = runs/beauty).
# Dry run on the CPU (issue 15 asks for one before the GPU sees it):
#   DEVICE=cpu DTYPE=f32 BIN=target/release/llmbs GGUF=$(scripts/fetch-model.sh) \
#   DATA=../shared/data/beauty RUN_SEED=runs/beauty TRAIN_STEPS=2 TRAIN_BATCH=4 TRAIN_MICRO=2 \
#   TRAIN_EVAL_EVERY=2 VALID_USERS=8 ANNEAL_STEPS=2 EVAL_LIMIT=100 EVAL_BATCH=16 \
#   scripts/gpu-quality-run.sh /tmp/qr-dry
# Knobs: DEVICE (cuda), DTYPE (bf16), TRAIN_STEPS (360: the cosine's length), TRAIN_MINUTES (6),
# TRAIN_BATCH (128), TRAIN_MICRO (32), TRAIN_LR (2e-4), TRAIN_MIX (srt=4), TRAIN_DENSE (--srt-dense;
# empty = the paper's one sample per prefix), TRAIN_EVAL_EVERY (120), VALID_USERS (1000),
# ANNEAL_STEPS (40), ANNEAL_LR (5e-4), EVAL_BATCH (128), EVAL_LIMIT (all users), EVAL_EXTRA
# (more `llmbs eval` flags, e.g. "--scoring choices"), INDEX_MODE (the seed run's index), PEAK_TFLOPS
# (989: H100/H200 bf16 dense), CHECK_MODEL (synthetic:smollm2-135m: the fused-kernel check's model;
# synthetic:tiny for a quick CPU dry run).
set -uo pipefail
OUT="${1:?usage: scripts/gpu-quality-run.sh OUTDIR [RESULTS]}"
RESULTS="${2:-}"
mkdir -p "$OUT" ${RESULTS:+"$RESULTS"}
BIN="${BIN:-dev-carry/llmbs}"
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-bf16}"
: "${GGUF:?GGUF: the model file}" "${DATA:?DATA: the Beauty folder}" "${RUN_SEED:?RUN_SEED: index + embeddings}"
R="$OUT/run"
log() { echo "[quality $(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt" >&2; }
stamp() { date +%s.%N; }

mkdir -p "$R/index" "$R/embeddings"
cp "$RUN_SEED"/index/*.index.json "$R/index/"
for f in semantic behavior; do
  if [ -f "$RUN_SEED/embeddings/$f.safetensors.gz" ]; then
    gunzip -c "$RUN_SEED/embeddings/$f.safetensors.gz" > "$R/embeddings/$f.safetensors"
  else
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

declare -A SECS
run_stage() {  # name, then the command
  local name=$1; shift
  local t0; t0=$(stamp)
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  SECS[$name]=$(awk -v a="$t0" -v b="$(stamp)" 'BEGIN { printf "%.1f", b - a }')
  log "$name rc=$rc in ${SECS[$name]} s"
  return $rc
}

# The fused training kernels (llm::ops) against the composed candle ops on this device before
# anything trains: the trainer's own step (`bench llm --workload step`) on a synthetic model,
# 4 AdamW steps at lr 1e-3 each way, f32 without TF32 and bf16: the first loss, the loss change
# and every gradient norm must agree. A disagreement (or a crash of the fused run)
# switches them off for the whole run (LLMBS_NO_FUSED=1) and says so in quality.json.
fused_check() {
  local dtype
  for dtype in f32 bf16; do
    for mode in fused composed; do
      env $([ $mode = composed ] && echo LLMBS_NO_FUSED=1) LLMBS_NO_TF32=1 "$BIN" bench llm \
        --model "${CHECK_MODEL:-synthetic:smollm2-135m}" --workload step --tune full --batch 8 \
        --seq 128 --runs 3 --step-lr 1e-3 --device "$DEVICE" --dtype $dtype --json \
        > "$OUT/fused-check-$dtype-$mode.jsonl" 2> "$OUT/fused-check-$dtype-$mode.err"
    done
  done
  python3 - "$OUT" > "$OUT/fused-check.json" <<'PY'
import json, math, sys
out = sys.argv[1]
def row(dtype, mode):
    try:
        rows = [json.loads(l) for l in open(f"{out}/fused-check-{dtype}-{mode}.jsonl") if l.startswith("{")]
        return rows[-1]["losses"], rows[-1]["grad_norms"]
    except Exception:
        return None
rel = lambda a, b: abs(a - b) / max(abs(b), 1e-12)
doc, ok = {}, True
# tolerances: first loss, loss change over 3 AdamW steps at lr 1e-3, each gradient norm
for dtype, tol in (("f32", (1e-3, 0.02, 0.01)), ("bf16", (2e-2, 0.1, 0.05))):
    f, c = row(dtype, "fused"), row(dtype, "composed")
    r = {"fused": f, "composed": c}
    if f is None or c is None or not all(map(math.isfinite, f[0] + f[1] + c[0] + c[1])):
        r["ok"] = c is None  # nothing to compare against: keep the fused path
    else:
        (fl, fg), (cl, cg) = f, c
        r["first_loss_rel"] = rel(fl[0], cl[0])
        r["loss_change_rel"] = rel(fl[-1] - fl[0], cl[-1] - cl[0])
        r["grad_norm_rel"] = max(rel(a, b) for a, b in zip(fg, cg))
        r["ok"] = (r["first_loss_rel"] <= tol[0] and r["loss_change_rel"] <= tol[1]
                   and r["grad_norm_rel"] <= tol[2])
    ok = ok and r["ok"]
    doc[dtype] = r
doc["fused_ok"] = ok
print(json.dumps(doc))
PY
  grep -q '"fused_ok": true' "$OUT/fused-check.json"
}
if fused_check; then
  log "fused kernels agree with the composed ops: $(cat "$OUT/fused-check.json")"
else
  export LLMBS_NO_FUSED=1
  log "fused kernels DISAGREE (or crashed): training with the composed ops; $(cat "$OUT/fused-check.json")"
fi

run_stage train_initial "$BIN" train --stage initial --run "$R" --data "$DATA" --model "$GGUF" \
  --device "$DEVICE" --dtype "$DTYPE" --steps "${TRAIN_STEPS:-360}" --max-minutes "${TRAIN_MINUTES:-6}" \
  --batch-size "${TRAIN_BATCH:-128}" --micro-batch "${TRAIN_MICRO:-32}" --lr "${TRAIN_LR:-2e-4}" \
  --warmup-steps 10 --eval-every "${TRAIN_EVAL_EVERY:-120}" --valid-users "${VALID_USERS:-1000}" \
  --mix "${TRAIN_MIX:-srt=4}" ${TRAIN_DENSE---srt-dense}
log "initial: $(sed -n 3p "$R/train/initial/report.md" 2>/dev/null)"
run_stage train_anneal "$BIN" train --stage anneal --run "$R" --device "$DEVICE" --dtype "$DTYPE" \
  --steps "${ANNEAL_STEPS:-40}" --batch-size "${TRAIN_BATCH:-128}" --micro-batch "${TRAIN_MICRO:-32}" \
  --lr "${ANNEAL_LR:-5e-4}" --warmup-steps 4 --eval-every 20 --valid-users "${VALID_USERS:-1000}"
LIMIT=${EVAL_LIMIT:+--limit $EVAL_LIMIT}
for adapter in on off; do
  run_stage "eval_adapter_$adapter" "$BIN" eval --run "$R" --split test --adapter "$adapter" \
    --batch "${EVAL_BATCH:-128}" --device "$DEVICE" --dtype f32 $LIMIT ${EVAL_EXTRA:-}
  log "eval adapter $adapter: $(grep -m1 -A2 'R@1' "$OUT/eval_adapter_$adapter.log" | tail -1)"
done
"$BIN" baselines --run "$R" --split test $LIMIT > "$OUT/baselines.log" 2>&1
[ -n "${SMI:-}" ] && kill "$SMI" 2>/dev/null

for k in "${!SECS[@]}"; do echo "$k ${SECS[$k]}"; done > "$OUT/stage-seconds.txt"
python3 - "$OUT" "${PEAK_TFLOPS:-989}" > "$OUT/quality.json" <<'PY'
import glob, json, os, sys
out, peak = sys.argv[1], float(sys.argv[2])
run = f"{out}/run"
def load(p):
    try:
        return json.load(open(p))
    except Exception as e:
        return {"missing": f"{p}: {e}"}
doc = {"stage_seconds": dict(l.split() for l in open(f"{out}/stage-seconds.txt"))}
doc["fused_check"] = load(f"{out}/fused-check.json")
doc["fused_kernels_used"] = os.environ.get("LLMBS_NO_FUSED") is None
tr = load(f"{run}/train/initial/report.json")
doc["train_initial"] = {k: tr.get(k) for k in ("steps", "total_steps", "ended", "seconds",
    "median_tokens_per_s", "loss_first_10_steps", "loss_last_10_steps", "best", "validations",
    "trainable_parameters", "device", "compute_dtype")}
# MFU = 6 x trainable parameters x tokens/s over the peak (full tuning: every weight, the grown
# embedding and head, and the GCT projectors).
params = tr.get("trainable_parameters") or 0
tps = tr.get("median_tokens_per_s") or 0
doc["mfu"] = {"params": params, "tokens_per_s": tps, "peak_tflops": peak,
              "mfu": 6 * params * tps / (peak * 1e12)}
doc["train_anneal"] = {k: load(f"{run}/train/anneal/report.json").get(k)
                       for k in ("steps", "seconds", "median_tokens_per_s", "best")}
doc["eval"] = [load(p) for p in sorted(glob.glob(f"{run}/eval/test-*.json"))]
doc["baselines"] = [load(p) for p in sorted(glob.glob(f"{run}/eval/baselines-*.json"))]
mem = f"{out}/gpu-memory.csv"
if os.path.exists(mem):
    used = [float(l.split(",")[1]) for l in open(mem) if l.count(",") == 1]
    doc["peak_gpu_memory_mib"] = max(used) if used else None
print(json.dumps(doc, indent=1))
PY
log "quality.json written"
if [ -n "$RESULTS" ]; then
  for f in "$R"/eval/*.predictions.jsonl; do gzip -f "$f"; done
  tar czf "$RESULTS/quality-results.tgz" -C "$OUT" run/train run/eval log.txt stage-seconds.txt \
    $(cd "$OUT" && ls *.log gpu-memory.csv fused-check* 2>/dev/null)
  cp "$OUT/quality.json" "$OUT/log.txt" "$RESULTS/"
fi
