#!/usr/bin/env bash
# The CPU checks after the Beauty training run (scripts/beauty-cpu-run.sh), as reported in
# docs/RESULTS.md. Usage: scripts/beauty-cpu-checks.sh full-test|untrained|untrained-1k|textinit|dense|prefix|dense-anneal|dense-more [RUN]
#   full-test  every test user (22,363) through beam search with the annealed model, adapter on
#   untrained  the untrained backbone (fresh ID rows) on the same 400 validation users and index
#   textinit   a 12.6-minute initial stage (to its step-55 validation) with the ID rows started from item text (the default
#              id_init), otherwise the settings of the first run, then its 400-user validation
#   untrained-1k  the untrained backbone on the 1,000 seeded validation and test users of `dense`
#   dense      a one-hour initial stage with dense SRT (every history ID of a 20-item window carries
#              loss) and SRT at 4/5 of the samples, then 1,000 seeded validation and test users
#   prefix     the A/B arm of `dense`: the same settings and seed with one SRT sample per prefix
#              (the paper's form), 14-minute limit (past its step-90 validation)
#   dense-anneal  the anneal stage of the first run's settings on top of `dense`, then the same
#              1,000 validation and test users with the adapter on (the adapter-off reports are
#              kept as eval/initial-*)
#   dense-more 200 more steps from the step-360 checkpoint of `dense` (resumed in a copy with a
#              560-step cosine, 30-minute limit), then the step-560 model on the same 1,000 users
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:?usage: scripts/beauty-cpu-checks.sh full-test|untrained|untrained-1k|textinit|dense|prefix|dense-anneal|dense-more [RUN]}
RUN=${2:-runs/beauty}
DATA=../shared/data/beauty
BIN=target/release/llmbs
cargo build --release
# The seeded 1,000 validation and test users every session-4 check is compared on.
eval_1k() {
  local run=$1 adapter=$2
  shift 2
  for split in valid test; do
    "$BIN" eval --run "$run" --data "$DATA" --split "$split" --limit 1000 --seed 1 \
      --adapter "$adapter" --batch 8 "$@"
  done
}
case "$WHAT" in
  full-test)
    "$BIN" eval --run "$RUN" --data "$DATA" --split test --adapter on --batch 8 --resume ;;
  untrained)
    mkdir -p "$RUN-untrained" && cp -r "$RUN/index" "$RUN-untrained/"
    "$BIN" eval --run "$RUN-untrained" --data "$DATA" --split valid --limit 400 --seed 1 --adapter off ;;
  textinit)
    mkdir -p "$RUN-textinit" && cp -r "$RUN/index" "$RUN/embeddings" "$RUN-textinit/"
    "$BIN" train --stage initial --run "$RUN-textinit" --data "$DATA" --steps 220 --batch-size 16 \
      --micro-batch 8 --lr 2e-4 --warmup-steps 10 --eval-every 55 --valid-users 200 --max-minutes 12.6
    "$BIN" eval --run "$RUN-textinit" --data "$DATA" --split valid --limit 400 --seed 1 --adapter off ;;
  untrained-1k)
    mkdir -p "$RUN-untrained-1k" && cp -r "$RUN/index" "$RUN-untrained-1k/"
    eval_1k "$RUN-untrained-1k" off ;;
  dense)
    mkdir -p "$RUN-dense" && cp -r "$RUN/index" "$RUN/embeddings" "$RUN-dense/"
    "$BIN" train --stage initial --run "$RUN-dense" --data "$DATA" --srt-dense --mix srt=4 \
      --steps 360 --batch-size 16 --micro-batch 8 --lr 2e-4 --warmup-steps 10 --eval-every 90 \
      --valid-users 200 --max-minutes 70
    eval_1k "$RUN-dense" off ;;
  prefix)
    mkdir -p "$RUN-prefix" && cp -r "$RUN/index" "$RUN/embeddings" "$RUN-prefix/"
    "$BIN" train --stage initial --run "$RUN-prefix" --data "$DATA" --mix srt=4 \
      --steps 360 --batch-size 16 --micro-batch 8 --lr 2e-4 --warmup-steps 10 --eval-every 90 \
      --valid-users 200 --max-minutes 14 ;;
  dense-anneal)
    for f in report-valid.json report-valid.md report.json report.md predictions-valid.jsonl \
      predictions.jsonl; do
      cp "$RUN-dense/eval/$f" "$RUN-dense/eval/initial-$f"
    done
    "$BIN" train --stage anneal --run "$RUN-dense" --data "$DATA" --steps 40 --batch-size 16 \
      --micro-batch 8 --lr 5e-4 --warmup-steps 4 --eval-every 20 --valid-users 200
    eval_1k "$RUN-dense" on ;;
  dense-more)
    mkdir -p "$RUN-dense2/checkpoints" "$RUN-dense2/train"
    cp -r "$RUN-dense/index" "$RUN-dense/embeddings" "$RUN-dense2/"
    cp -r "$RUN-dense/checkpoints/initial" "$RUN-dense/checkpoints/initial-best" "$RUN-dense2/checkpoints/"
    cp -r "$RUN-dense/train/initial" "$RUN-dense2/train/"
    "$BIN" train --stage initial --run "$RUN-dense2" --data "$DATA" --resume --steps 560 --max-minutes 30
    eval_1k "$RUN-dense2" off --model "$RUN-dense2/checkpoints/initial" ;;
  *) echo "unknown check: $WHAT" >&2; exit 2 ;;
esac
