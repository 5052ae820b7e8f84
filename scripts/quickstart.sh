#!/usr/bin/env bash
# From a fresh machine (Rust toolchain + python3 with pip): fetch the default model, build, and
# run the whole pipeline (data -> embed -> behavior -> index -> train initial -> train anneal ->
# eval) with the embedded `beauty-smoke` config on ../shared/data/beauty (or --data DIR), then
# print the report. Rerunning skips the stages that are up to date.
# The whole of it ends within DEADLINE minutes (29 by default), the build included: the
# training stage's budget shrinks to what the machine leaves after the build, the embeddings,
# SASRec and the predicted evaluation (`llmbs pipeline --deadline-minutes`).
# Usage: scripts/quickstart.sh [--data DIR] [--config NAME_OR_FILE] [--run DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=()
CONFIG=beauty-smoke
while [ $# -gt 0 ]; do
  case "$1" in
    --data|--run) ARGS+=("$1" "$2"); shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    *) echo "quickstart: unknown argument $1 (expected --data DIR, --config NAME or --run DIR)" >&2; exit 2 ;;
  esac
done
start=$(date +%s)
scripts/fetch-model.sh
cargo build --release
target/release/llmbs pipeline --config "$CONFIG" --deadline-minutes "${DEADLINE:-29}" \
  --since "$start" ${ARGS[@]+"${ARGS[@]}"}
echo "quickstart: done in $(( $(date +%s) - start )) s"
