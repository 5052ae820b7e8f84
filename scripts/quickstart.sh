#!/usr/bin/env bash
# From a fresh machine (Rust toolchain + python3 with pip): fetch the default model, build, and
# run what llmbs can run today on the embedded defaults:
#   dataset statistics, then the semantic item table Z^s with its neighbour check.
# Usage: scripts/quickstart.sh [--data DIR] [--run DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/beauty
RUN=runs/quickstart
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA="$2"; shift 2 ;;
    --run) RUN="$2"; shift 2 ;;
    *) echo "quickstart: unknown argument $1 (expected --data DIR or --run DIR)" >&2; exit 2 ;;
  esac
done
scripts/fetch-model.sh
cargo build --release
BIN=target/release/llmbs
mkdir -p "$RUN"
"$BIN" data stats --data "$DATA" | tee "$RUN/data-stats.md"
"$BIN" embed --data "$DATA" --out "$RUN/embeddings/semantic.safetensors" --neighbors 10 | tee "$RUN/embed-neighbors.txt"
echo "quickstart: outputs in $RUN"
