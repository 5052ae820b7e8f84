#!/usr/bin/env bash
# The test command: fetches the default model (tests check tokenizer ids and parity on it),
# then runs every test in release mode (numeric tests on real weights are slow in debug).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh > /dev/null
cargo test --release --all-targets "$@"
