#!/usr/bin/env bash
# The fixed-budget A/B of the CPU recipe's levers (issue 22, docs/RESULTS.md "CPU recipe A/B"):
# every arm trains the initial stage for the same CPU minutes from the same seed on runs/beauty-cpu's
# embeddings, index and behavior models (its SASRec teacher: `llmbs pipeline --config beauty-cpu
# --to teacher`), then ranks the same 2,000 seeded validation users
# (beam 20). An arm's cosine schedule ends at the budget: `llmbs train --budget-minutes` times
# 12 steps and a save on a throwaway trainer and chooses the step count (train::budget; the
# final validation on 2,000 users is the arm's measurement, so it is not paid from the budget:
# --budget-excludes-validation). The probe's figures are in the arm's report.
#
# Usage: scripts/cpu-ab.sh ARM [ARM ...]   (ARM names below; default: all, in order)
#   MINUTES=20 SEED=0 BASE=runs/beauty-cpu OUT=runs/ab DTYPE=f32 scripts/cpu-ab.sh k4 k8
# DTYPE: f32 (the default, as the session-6 rows), bf16 or auto (the recipe's: the faster GEMM).
# The learning-rate probe: MINUTES=6 OUT=runs/ab-lr scripts/cpu-ab.sh k4-lr2e-4 k4-lr5e-4 k4
# The smoke's levers (session 14): MINUTES=12 DTYPE=auto BASE=runs/smoke-l4 OUT=runs/ab-s14
#   scripts/cpu-ab.sh smoke smoke-lr4e-3 smoke-b8 smoke-distill (an arm may name its own
#   --batch-size; the others train at 16).
# The smoke's depth (session 15): MINUTES=12 DTYPE=auto BASE=runs/smoke-l4 OUT=runs/ab-s15
#   scripts/cpu-ab.sh smoke smoke-l2 smoke-l1
# SRT only (session 16): MINUTES=12 DTYPE=auto BASE=runs/smoke-l4 OUT=runs/ab-s16
#   scripts/cpu-ab.sh smoke-l2 smoke-l2-srt
# Distillation from beauty-cpu's full SASRec (session 18): MINUTES=12 DTYPE=auto
#   BASE=runs/beauty-cpu-s17 OUT=runs/ab-s18 scripts/cpu-ab.sh cpu cpu-d05 cpu-d08 cpu-d05-t2
# The same on the smoke, its 3-minute SASRec the teacher (session 18): MINUTES=12 DTYPE=auto
#   BASE=runs/smoke-l4 OUT=runs/ab-s18-smoke scripts/cpu-ab.sh smoke-l2-srt smoke-l2-srt-d08
# Results: $OUT/<arm>/train/initial/{report.json,log.jsonl}, one row each in $OUT/ab.tsv; with
# two arms or more, each arm minus the first on the same validation users, user by user, with
# paired standard errors of R@10 and N@10 (`llmbs paired` over each arm's last
# train/initial/valid-ranks-<step>.jsonl) in $OUT/paired.{md,json}.
# Between arms the script waits while $OUT/hold exists (to build without sharing the cores).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-20}"
SEED="${SEED:-0}"
DTYPE="${DTYPE:-f32}"
BASE="${BASE:-runs/beauty-cpu}"
OUT="${OUT:-runs/ab}"
DATA="${DATA:-../shared/data/beauty}"
mkdir -p "$OUT"
BIN="${BIN:-$OUT/llmbs}"
[ -x "$BIN" ] || cp target/release/llmbs "$BIN"

# Common to every arm: dense SRT at 4/5 of the samples, GCT, effective batch 16, seed, the
# same 2,000 validation users; arms differ only in the flags after their name.
COMMON=(--srt-dense --micro-batch 8 --warmup-steps 20 --seed "$SEED" --dtype "$DTYPE")
# The effective batch is 16 and the mix SRT at 4/5 unless an arm names its own (clap refuses a
# flag given twice).
BATCH=(--batch-size 16)
MIX=(--mix srt=4)
SRT_ONLY="--mix srt=1,id2text=0,text2id=0,hist_text2id=0,hist_id2text=0"
# beauty-cpu's initial stage before its distillation (session 17), which is also the smoke's
# (session 16): 2 layers, SRT alone, compact prompts, behavior input. Their arms differ by BASE.
CPU="--lr 2e-3 --item-loss --layers 2 --lr-new 6e-3 --weight-decay-new 0 --prompts configs/prompts-compact.json --behavior-input $SRT_ONLY"
declare -A ARMS=(
  [k4]="--lr 2e-3 --item-loss --layers 4"
  [k8]="--lr 2e-3 --item-loss --layers 8"
  [k12]="--lr 2e-3 --item-loss --layers 12"
  [k16]="--lr 2e-3 --item-loss --layers 16"
  [full]="--lr 2e-3 --item-loss"
  [k4-lr2e-4]="--lr 2e-4 --item-loss --layers 4"
  [k4-lr5e-4]="--lr 5e-4 --item-loss --layers 4"
  [k4-lr5e-3]="--lr 5e-3 --item-loss --layers 4"
  [k4-fullvocab]="--lr 2e-3 --layers 4"
  [k4-groups]="--lr 2e-3 --item-loss --layers 4 --lr-new 6e-3 --weight-decay-new 0"
  [k4-distill]="--lr 2e-3 --item-loss --layers 4 --distill-weight 0.5"
  [recipe]="--lr 2e-3 --item-loss --layers 4 --lr-new 6e-3 --weight-decay-new 0"
  [recipe-compact]="--lr 2e-3 --item-loss --layers 4 --lr-new 6e-3 --weight-decay-new 0 --prompts configs/prompts-compact.json"
  [recipe-bi]="--lr 2e-3 --item-loss --layers 4 --lr-new 6e-3 --weight-decay-new 0 --behavior-input"
  [recipe-compact-bi]="--lr 2e-3 --item-loss --layers 4 --lr-new 6e-3 --weight-decay-new 0 --prompts configs/prompts-compact.json --behavior-input"
  [smoke]="--lr 2e-3 --item-loss --layers 4 --lr-new 6e-3 --weight-decay-new 0 --prompts configs/prompts-compact.json --behavior-input"
  [smoke-lr4e-3]="--lr 4e-3 --item-loss --layers 4 --lr-new 1.2e-2 --weight-decay-new 0 --prompts configs/prompts-compact.json --behavior-input"
  [smoke-b8]="--lr 2e-3 --item-loss --layers 4 --lr-new 6e-3 --weight-decay-new 0 --prompts configs/prompts-compact.json --behavior-input --batch-size 8"
  [smoke-distill]="--lr 2e-3 --item-loss --layers 4 --lr-new 6e-3 --weight-decay-new 0 --prompts configs/prompts-compact.json --behavior-input --distill-weight 0.5"
  [smoke-l2]="--lr 2e-3 --item-loss --layers 2 --lr-new 6e-3 --weight-decay-new 0 --prompts configs/prompts-compact.json --behavior-input"
  [smoke-l1]="--lr 2e-3 --item-loss --layers 1 --lr-new 6e-3 --weight-decay-new 0 --prompts configs/prompts-compact.json --behavior-input"
  [smoke-l2-srt]="$CPU"
  [k4-srtonly]="--lr 2e-3 --item-loss --layers 4 $SRT_ONLY"
  [cpu]="$CPU"
  [cpu-d05]="$CPU --distill-weight 0.5"
  [cpu-d08]="$CPU --distill-weight 0.8"
  [cpu-d05-t2]="$CPU --distill-weight 0.5 --distill-temperature 2"
  [cpu-d10]="$CPU --distill-weight 1"
  [smoke-l2-srt-d08]="$CPU --distill-weight 0.8"
)
ORDER=(k4 k4-distill k4-fullvocab k4-groups k8 k12 k16 full k4-lr5e-3 k4-srtonly)
[ $# -gt 0 ] && ORDER=("$@")

link_base() { # the arm's run directory shares the base run's inputs
  mkdir -p "$1"
  for d in embeddings index behavior; do
    [ -e "$1/$d" ] || ln -s "$(realpath "$BASE/$d")" "$1/$d"
  done
}

for arm in "${ORDER[@]}"; do
  flags="${ARMS[$arm]:-}"
  [ -n "$flags" ] || { echo "cpu-ab: unknown arm $arm" >&2; exit 2; }
  while [ -e "$OUT/hold" ]; do sleep 10; done
  run="$OUT/$arm"
  rm -rf "$run"; link_base "$run"
  # shellcheck disable=SC2086
  "$BIN" train --stage initial --run "$run" --data "$DATA" "${COMMON[@]}" $flags \
    $(case " $flags " in *" --batch-size "*) ;; *) echo "${BATCH[@]}" ;; esac) \
    $(case " $flags " in *" --mix "*) ;; *) echo "${MIX[@]}" ;; esac) \
    --budget-minutes "$MINUTES" --budget-excludes-validation --valid-users 2000 \
    2>"$run.err" >/dev/null
  grep -m1 '^budget' "$run.err" | sed "s/^/cpu-ab: $arm: /" >&2 || true
  python3 - "$arm" "$run" "$flags" >>"$OUT/ab.tsv" <<'PY'
import json, sys
arm, run, flags = sys.argv[1:4]
r = json.load(open(f"{run}/train/initial/report.json"))
logs = [json.loads(l) for l in open(f"{run}/train/initial/log.jsonl")]
steps = [x for x in logs if "lr" in x]
val = [x for x in logs if "valid_loss" in x][-1]
mins = sum(x["seconds"] for x in steps) / 60
print("\t".join(str(v) for v in [
    arm, flags, round(r["median_tokens_per_s"], 1), len(steps), round(mins, 1),
    round(val["valid_loss"], 4), val["recall10"], val["ndcg10"], val["ndcg10_se"],
    val["coverage10"], val["users"], round(val["seconds"], 1)]))
PY
  tail -1 "$OUT/ab.tsv" >&2
done

# The ranks file of an arm's last validation.
ranks_of() {
  python3 - "$1" <<'PY'
import json, sys
run = sys.argv[1]
logs = [json.loads(l) for l in open(f"{run}/train/initial/log.jsonl")]
val = [x for x in logs if "valid_loss" in x][-1]
print(f"{run}/train/initial/valid-ranks-{val['step']}.jsonl")
PY
}
if [ "${#ORDER[@]}" -gt 1 ]; then
  pairs=()
  for arm in "${ORDER[@]}"; do pairs+=("$arm=$(ranks_of "$OUT/$arm")"); done
  "$BIN" paired "${pairs[@]}" --json "$OUT/paired.json" >"$OUT/paired.md" \
    || { echo "cpu-ab: '$BIN paired' failed (a binary older than the subcommand? remove $BIN)" >&2; exit 1; }
  cat "$OUT/paired.md" >&2
fi
