#!/usr/bin/env bash
# The test command: fetches the default model (tests check tokenizer ids and parity on it),
# then runs every test in release mode (numeric tests on real weights are slow in debug).
# Then the fused-op tests again on forced SIMD paths (LLMBS_SIMD, llm::ops::vmath), so that
# the scalar and AVX2 kernels run on every machine, not only where they are the best path.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh > /dev/null
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
