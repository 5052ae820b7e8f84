#!/usr/bin/env bash
# The aarch64 cross test: builds the crate for aarch64 Linux and runs the fused-op lib tests
# (llm::ops, the NEON path of llm::ops::vmath included) under qemu-user; then `cargo check`s
# aarch64 macOS (no linker needed). A separate target dir keeps the x86 one untouched.
#
# Setup once (Debian/Ubuntu):
#   rustup target add aarch64-unknown-linux-gnu aarch64-apple-darwin
#   apt-get install -y gcc-aarch64-linux-gnu qemu-user libc6-dev-arm64-cross
# Usage: scripts/test-arm.sh [test filter, default llm::ops]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${ARM_TARGET_DIR:-/work/target-arm}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# The C parts of dependencies (if any) need the cross compiler too.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
cargo test --release --target aarch64-unknown-linux-gnu --lib "${1:-llm::ops}"
if rustup target list --installed | grep -qx aarch64-apple-darwin; then
  # ring (rustls <- ureq <- hf-hub) builds C and assembly with the target's cc: without an
  # Apple toolchain (clang, -arch) its build script fails; that is no error of this crate.
  cargo check --release --target aarch64-apple-darwin --lib \
    || echo "test-arm: the macOS check failed (see above; ring needs an Apple-targeting C compiler)" >&2
else
  echo "test-arm: aarch64-apple-darwin not installed: macOS check skipped" >&2
fi
