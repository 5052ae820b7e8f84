#!/usr/bin/env bash
# The CPU checks after the Beauty training run (scripts/beauty-cpu-run.sh), as reported in
# docs/RESULTS.md. Usage: scripts/beauty-cpu-checks.sh full-test|untrained|textinit [RUN]
#   full-test  every test user (22,363) through beam search with the annealed model, adapter on
#   untrained  the untrained backbone (fresh ID rows) on the same 400 validation users and index
#   textinit   a 12.6-minute initial stage (to its step-55 validation) with the ID rows started from item text (the default
#              id_init), otherwise the settings of the first run, then its 400-user validation
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:?usage: scripts/beauty-cpu-checks.sh full-test|untrained|textinit [RUN]}
RUN=${2:-runs/beauty}
DATA=../shared/data/beauty
BIN=target/release/llmbs
cargo build --release
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
  *) echo "unknown check: $WHAT" >&2; exit 2 ;;
esac
