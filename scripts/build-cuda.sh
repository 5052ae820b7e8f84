#!/usr/bin/env bash
# Build the CUDA (`--features cuda`) llmbs binary on a machine without a GPU.
#
# Recipe: /work/shared/notes/cuda-build.md
#   * nvcc, headers and CUDA 13.0 libraries come from PyPI (pinned to 13.0 to
#     match the GPU machine's driver 580) into .cache/cuda-venv;
#   * .cache/cuda-root is a CUDA root folder made of symlinks into that venv,
#     plus a link-time stub libcuda.so (the real driver's libcuda.so.1 is
#     loaded at run time; the stub never ships);
#   * cargo builds into target-cuda/ (kept separate from the CPU target/).
#
# Usage:
#   scripts/build-cuda.sh           full release build, strip, gzip, ldd
#   scripts/build-cuda.sh --check   only `cargo check --all-targets --features cuda` (tests too)
#   --nccl (with either)            feature `nccl` instead of `cuda` (data-parallel training
#                                   over NCCL): also installs nvidia-nccl-cu13 and links
#                                   libnccl.so; the binary then needs libnccl.so.2 at run time
#   scripts/build-cuda.sh --kernels only llmbs's own kernels (src/llm/ops/cuda/kernels.cu) to
#                                   PTX with nvcc: seconds, no cargo (build.rs does the same
#                                   inside a `--features cuda` build)
#
# Env: CUDA_COMPUTE_CAP (default 90 = Hopper, H100/H200), CARGO_BUILD_JOBS
# (default 2), PYTHON (default python3).
set -euo pipefail

MODE=build
FEATURES=cuda
for arg in "$@"; do
    case "$arg" in
        --check) MODE=check ;;
        --nccl) FEATURES=nccl ;;
        --kernels) MODE=kernels ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE="$ROOT/.cache"
VENV="$CACHE/cuda-venv"
CUDA_ROOT_DIR="$CACHE/cuda-root"
TARGET_DIR="$ROOT/target-cuda"
PYTHON="${PYTHON:-python3}"

log() { printf '[build-cuda] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- 1. venv
PKGS=(
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-cuda-runtime==13.0.96"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-cccl<13.1"
    "nvidia-cublas<13.1"
    "nvidia-curand"
    "nvidia-cuda-nvrtc<13.1"
)
if [[ "$FEATURES" == nccl ]]; then
    # 2.30: the NCCL API version of cudarc's bindings (feature nccl-02030).
    PKGS+=("nvidia-nccl-cu13==2.30.7")
fi
STAMP="$VENV/.llmbs-cuda-pkgs"
WANT_STAMP="$(printf '%s\n' "${PKGS[@]}")"

mkdir -p "$CACHE"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT_STAMP" ]]; then
    log "venv up to date: $VENV"
else
    log "creating venv $VENV with CUDA 13.0 packages from PyPI"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet "${PKGS[@]}"
    printf '%s\n' "$WANT_STAMP" > "$STAMP"
fi

CU13="$(ls -d "$VENV"/lib/python3.*/site-packages/nvidia/cu13 2>/dev/null | head -n1 || true)"
if [[ -z "$CU13" || ! -x "$CU13/bin/nvcc" ]]; then
    echo "nvcc not found under $VENV/lib/python3.*/site-packages/nvidia/cu13 (delete $VENV and rerun)" >&2
    exit 1
fi

# ---------------------------------------------------------- 2. CUDA root
mkdir -p "$CUDA_ROOT_DIR/lib64"
for d in bin include nvvm; do
    ln -sfn "$CU13/$d" "$CUDA_ROOT_DIR/$d"
done

if [[ "$MODE" == kernels ]]; then
    cap="${CUDA_COMPUTE_CAP:-90}"
    out="$CACHE/llmbs_kernels.ptx"
    "$CUDA_ROOT_DIR/bin/nvcc" --ptx -O3 -std=c++17 "-arch=compute_$cap" -I "$CUDA_ROOT_DIR/include" \
        src/llm/ops/cuda/kernels.cu -o "$out"
    log "kernels.cu -> $out: $(grep -c '^.entry\|\.entry ' "$out") kernels (compute_$cap)"
    exit 0
fi

# unversioned names the linker wants -> the versioned .so files from PyPI
for name in cublas cublasLt curand nvrtc cudart; do
    real="$(ls "$CU13"/lib/lib"$name".so.[0-9]* 2>/dev/null | sort -V | head -n1 || true)"
    if [[ -z "$real" ]]; then
        echo "missing lib$name.so.* in $CU13/lib" >&2
        exit 1
    fi
    ln -sfn "$real" "$CUDA_ROOT_DIR/lib64/lib$name.so"
    ln -sfn "$real" "$CUDA_ROOT_DIR/lib64/$(basename "$real")"
done

# NCCL (feature nccl): cudarc links -lnccl; the wheel ships only libnccl.so.2.
if [[ "$FEATURES" == nccl ]]; then
    nccl="$(find "$VENV" -name 'libnccl.so.2*' | sort -V | head -n1 || true)"
    if [[ -z "$nccl" ]]; then
        echo "libnccl.so.2 not found under $VENV (nvidia-nccl-cu13 installed?)" >&2
        exit 1
    fi
    ln -sfn "$nccl" "$CUDA_ROOT_DIR/lib64/libnccl.so"
    ln -sfn "$nccl" "$CUDA_ROOT_DIR/lib64/libnccl.so.2"
    log "NCCL: $nccl"
fi

# Stub libcuda.so from the cu* symbols cudarc declares (needs cudarc's source).
log "cargo fetch"
nice -n 19 cargo fetch --quiet
CUDARC_SYS="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | sort -V | tail -n1 || true)"
if [[ -z "$CUDARC_SYS" ]]; then
    echo "cudarc 0.19.* source not found in ${CARGO_HOME:-$HOME/.cargo}/registry/src" >&2
    exit 1
fi
STUB_C="$CUDA_ROOT_DIR/libcuda-stub.c"
STUB_SO="$CUDA_ROOT_DIR/lib64/libcuda.so"
NEW_STUB_C="$(
    echo "/* link-time stub of the CUDA driver API, generated from $CUDARC_SYS */"
    grep -rhoE 'fn cu[A-Za-z0-9_]+\(' "$CUDARC_SYS"/*.rs \
        | sed -E 's/^fn (cu[A-Za-z0-9_]+)\($/\1/' | sort -u \
        | awk '{ printf "void %s(void) {}\n", $1 }'
)"
if [[ -f "$STUB_SO" && -f "$STUB_C" && "$(cat "$STUB_C")" == "$NEW_STUB_C" ]]; then
    log "stub libcuda.so up to date"
else
    printf '%s\n' "$NEW_STUB_C" > "$STUB_C"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB_SO" "$STUB_C"
    log "stub libcuda.so: $(grep -c '^void' "$STUB_C") symbols"
fi

# ------------------------------------------------------------ 3. cargo
# CUDA_ROOT: cudarc's build script adds $CUDA_ROOT/lib64 to the link search
# path (that also serves candle-kernels' -lcudart); nvcc is found on PATH.
# Nothing else is needed (no CUDA_PATH/CUDA_HOME/NVCC_CCBIN/LIBRARY_PATH).
# Keep this environment stable: cudarc reruns its build script (and candle is
# rebuilt, ~4 min) whenever CUDA_HOME/CUDA_PATH/CUDA_ROOT/... change, and
# candle-kernels' nvcc run (~5 min) whenever CUDA_COMPUTE_CAP/NVCC/NVCC_CCBIN do.
export CUDA_ROOT="$CUDA_ROOT_DIR"
unset CUDA_PATH CUDA_HOME CUDA_TOOLKIT_ROOT_DIR CUDARC_CUDA_VERSION
export PATH="$CUDA_ROOT_DIR/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# cudaforge (candle-kernels' nvcc driver) runs this many nvcc at once
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$CARGO_BUILD_JOBS}"

log "nvcc: $(nvcc --version | tail -n1)"
log "CUDA_ROOT=$CUDA_ROOT CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS"

# target-cuda/ is not in the repo's .gitignore; keep git from seeing it
mkdir -p "$TARGET_DIR"
[[ -f "$TARGET_DIR/.gitignore" ]] || echo '*' > "$TARGET_DIR/.gitignore"

if [[ "$MODE" == check ]]; then
    nice -n 19 cargo check --all-targets --features "$FEATURES" --target-dir "$TARGET_DIR"
    log "cargo check --features $FEATURES: OK"
    exit 0
fi

start=$SECONDS
nice -n 19 cargo build --release --features "$FEATURES" --target-dir "$TARGET_DIR"
log "cargo build took $((SECONDS - start)) s"

BIN="$TARGET_DIR/release/llmbs"
strip "$BIN"
gzip -1 -c "$BIN" > "$TARGET_DIR/llmbs-cuda.gz.tmp"
mv "$TARGET_DIR/llmbs-cuda.gz.tmp" "$TARGET_DIR/llmbs-cuda.gz"
# Which source the binary is (device-pack.sh carries it, device-check.sh logs it).
# The last commit that changed the source (docs-only commits after it do not change the binary).
echo "$(git log -1 --format=%h -- src build.rs Cargo.toml Cargo.lock)$(git diff --quiet HEAD -- src build.rs Cargo.toml Cargo.lock || echo -dirty) features=$FEATURES" \
    > "$TARGET_DIR/llmbs-cuda.commit"

echo
echo "sizes:"
ls -l "$BIN" "$TARGET_DIR/llmbs-cuda.gz" | awk '{ printf "  %6.1f MB  %s\n", $5 / 1e6, $NF }'
echo
echo "ldd $BIN (libcuda.so.1 is the driver; the others (and libnccl.so.2 with --nccl) come from the CUDA 13 runtime"
echo "libs, e.g. PyTorch's nvidia/cu13/lib, on LD_LIBRARY_PATH; 'not found' is expected here"
echo "without LD_LIBRARY_PATH):"
ldd "$BIN" | sed 's/^/  /' || true
echo
echo "binary: $BIN"
echo "gzip:   $TARGET_DIR/llmbs-cuda.gz"
