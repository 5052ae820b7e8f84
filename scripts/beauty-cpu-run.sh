#!/usr/bin/env bash
# The CPU training run of the real Beauty reported in docs/RESULTS.md: the initial stage (one
# hour budget on 2 cores), the anneal stage, evaluation with the adapter on and off on seeded
# samples of validation and test users, and the perplexity of held-out item text for the
# original backbone, the initial model and the annealed one (adapter off / on).
# Needs RUN/index/*.index.json and RUN/embeddings/{semantic,behavior}.safetensors (llmbs embed,
# llmbs behavior, llmbs index, or `llmbs pipeline --to index`).
# Usage: scripts/beauty-cpu-run.sh [RUN] [USERS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/beauty}
USERS=${2:-400}
DATA=../shared/data/beauty
BIN=target/release/llmbs
cargo build --release
# --id-init mean: this run predates the text initialisation of the ID rows (the default since).
"$BIN" train --stage initial --run "$RUN" --data "$DATA" --steps 220 --batch-size 16 \
  --micro-batch 8 --lr 2e-4 --warmup-steps 10 --eval-every 55 --valid-users 200 --max-minutes 55 \
  --id-init mean
# Validation R@10 was still rising at step 220: the run continued (a warm restart of the cosine
# over 400 steps) from the step-220 checkpoint.
"$BIN" train --stage initial --run "$RUN" --data "$DATA" --resume --steps 400 --max-minutes 28
"$BIN" train --stage anneal --run "$RUN" --data "$DATA" --steps 40 --batch-size 16 \
  --micro-batch 8 --lr 5e-4 --warmup-steps 4 --eval-every 20 --valid-users 200
for split in valid test; do
  for adapter in off on; do
    "$BIN" eval --run "$RUN" --data "$DATA" --split "$split" --limit "$USERS" --seed 1 \
      --adapter "$adapter" --batch 8
    cp "$RUN/eval/report$([ "$split" = valid ] && echo -valid).json" "$RUN/eval/report-$split-adapter-$adapter.json"
    cp "$RUN/eval/report$([ "$split" = valid ] && echo -valid).md" "$RUN/eval/report-$split-adapter-$adapter.md"
  done
done
"$BIN" ppl --data "$DATA" --model default --adapter off --run "$RUN" --label original
"$BIN" ppl --data "$DATA" --adapter off --run "$RUN" --label initial
"$BIN" ppl --data "$DATA" --adapter on --run "$RUN" --label anneal-on
