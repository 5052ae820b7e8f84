#!/usr/bin/env bash
# The test command: fetches the default model (tests check tokenizer ids and parity on it),
# then runs every test in release mode (numeric tests on real weights are slow in debug).
# Then the fused-op tests again on forced SIMD paths (LLMBS_SIMD, llm::ops::vmath), so that
# the scalar and AVX2 kernels run on every machine, not only where they are the best path.
# Kernel tests that need a CPU unit this machine lacks (AVX512-BF16, AMX) pass without
# running; they log a SKIPPED line to LLMBS_SKIP_LOG, printed at the end so no one takes
# them for checked.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh > /dev/null
skips=$(mktemp)
trap 'rm -f "$skips"' EXIT
export LLMBS_SKIP_LOG="$skips"
cargo test --release --all-targets "$@"

# The fused ops' unit tests and the fused training path against the composed one.
fused_tests() {
  LLMBS_SIMD="$1" cargo test --release --lib llm::ops
  LLMBS_SIMD="$1" cargo test --release --test fused
}
echo "== fused ops on LLMBS_SIMD=scalar"
fused_tests scalar
if grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo; then
  echo "== fused ops on LLMBS_SIMD=avx2"
  fused_tests avx2
else
  echo "== fused ops on LLMBS_SIMD=avx2: SKIPPED (this CPU has no AVX2+FMA)"
fi
if [[ -s "$skips" ]]; then
  echo "kernel tests skipped on this CPU ($(sort -u "$skips" | wc -l)):" >&2
  sort -u "$skips" >&2
fi
