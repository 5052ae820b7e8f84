#!/usr/bin/env bash
# Side-by-side CPU benchmark: PyTorch/transformers (the "peer") vs our Rust binary.
#
# Usage:
#   scripts/bench-peer.sh [WORKLOAD ...]           # default: forward train embed beam
#                                                  # (also: train-bf16: ours --dtype bf16 vs
#                                                  # torch.autocast bf16; see docs/perf.md)
#   scripts/bench-peer.sh --install-only           # just set up .venv-peer
#   scripts/bench-peer.sh --peer-only forward      # skip our side
#
# Environment (all optional):
#   GGUF      path to SmolLM2-135M-Instruct.Q4_1.gguf
#             (default: ${LLMBS_CACHE:-$HOME/.cache/llmbs}/models/SmolLM2-135M-Instruct.Q4_1.gguf,
#              as placed by scripts/fetch-model.sh)
#   RUNS      timed runs per workload (default 5; one warm-up run is added)
#   THREADS   torch / llmbs threads (default 2)
#   ITEMS     items for the embed workload (default 256)
#   BEAM_USERS users for the beam workload (default 8)
#   OURS_BEAM_USERS users per timed run on our side (default BEAM_USERS; ours runs in seconds,
#             so more users make its median steadier)
#   BEAM_BATCHES our beam batch sizes (default "1 8"; the peer always runs 1 and 8)
#   DATA_DIR  Beauty data folder (default ../shared/data/beauty relative to the repo root)
#   BIN       our binary (default target/release/llmbs)
#   BATCH, SEQ  forward/train shape (default 8, 128)
#   PEER_ARGS extra arguments for scripts/peer_bench.py
#
# The venv lives in .venv-peer (git-ignored). Install is skipped when
# `import torch, transformers, gguf, accelerate` already works there.
#
# Note: only PyPI is reachable here, so torch comes from plain `pip install torch`,
# which on Linux x86_64 pulls the CUDA build plus nvidia-* wheels (several GiB).
# It still runs fine on CPU; it is just big.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv-peer"
PY="$VENV/bin/python"
GGUF="${GGUF:-${LLMBS_CACHE:-$HOME/.cache/llmbs}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
RUNS="${RUNS:-5}"
THREADS="${THREADS:-2}"
ITEMS="${ITEMS:-256}"
BEAM_USERS="${BEAM_USERS:-8}"
BEAM_BATCHES="${BEAM_BATCHES:-1 8}"
OURS_BEAM_USERS="${OURS_BEAM_USERS:-$BEAM_USERS}"
DATA_DIR="${DATA_DIR:-$ROOT/../shared/data/beauty}"
BIN="${BIN:-$ROOT/target/release/llmbs}"
BATCH="${BATCH:-8}"
SEQ="${SEQ:-128}"

INSTALL_ONLY=0
PEER_ONLY=0
WORKLOADS=()
for a in "$@"; do
  case "$a" in
    --install-only) INSTALL_ONLY=1 ;;
    --peer-only) PEER_ONLY=1 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    forward|train|train-bf16|embed|beam) WORKLOADS+=("$a") ;;
    *) echo "bench-peer: unknown argument '$a' (workloads: forward train train-bf16 embed beam)" >&2; exit 2 ;;
  esac
done
[ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(forward train embed beam)

log() { echo "[bench-peer] $*" >&2; }

# ---------------------------------------------------------------- venv setup
setup_venv() {
  if [ ! -x "$PY" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  if "$PY" -c 'import torch, transformers, gguf, accelerate' >/dev/null 2>&1; then
    log "venv ready (torch, transformers, gguf, accelerate import); skipping install"
    return
  fi
  log "installing torch, transformers, gguf, accelerate, numpy from PyPI (torch is large; this takes a while)"
  local t0=$SECONDS
  "$PY" -m pip install --upgrade pip >&2
  "$PY" -m pip install torch transformers gguf accelerate numpy >&2
  # accelerate: transformers refuses to load a GGUF file without it.
  # sentencepiece/protobuf are not needed: SmolLM2 is a gpt2-style BPE tokenizer.
  if ! "$PY" -c 'import torch, transformers, gguf, accelerate' >&2; then
    log "install finished but 'import torch, transformers, gguf' fails"; exit 1
  fi
  log "install took $((SECONDS - t0)) s; venv size: $(du -sh "$VENV" | cut -f1)"
}

setup_venv
"$PY" -c 'import importlib.metadata, torch, transformers, gguf, numpy; print("[bench-peer] torch", torch.__version__, "| transformers", transformers.__version__, "| gguf", importlib.metadata.version("gguf"), "| accelerate", importlib.metadata.version("accelerate"), "| numpy", numpy.__version__)' >&2
[ "$INSTALL_ONLY" = 1 ] && exit 0

if [ ! -f "$GGUF" ]; then
  log "model not found: $GGUF (run scripts/fetch-model.sh, or set GGUF=...)"; exit 1
fi

# ---------------------------------------------------------------- peer side
run_peer() {
  local wl
  wl="$(IFS=,; echo "${WORKLOADS[*]}")"
  log "peer: workloads=$wl runs=$RUNS threads=$THREADS"
  # shellcheck disable=SC2086
  "$PY" "$ROOT/scripts/peer_bench.py" --gguf "$GGUF" --data-dir "$DATA_DIR" \
    --workloads "$wl" --runs "$RUNS" --threads "$THREADS" --batch "$BATCH" --seq "$SEQ" \
    --items "$ITEMS" --beam-users "$BEAM_USERS" ${PEER_ARGS:-} | tee -a "$PEER_JSON"
}

# ---------------------------------------------------------------- our side
# >>> run_ours: our Rust binary, the same workloads and sizes, one JSON line each.
run_ours() {
  local w extra bb
  for w in "${WORKLOADS[@]}"; do
    log "ours: workload=$w"
    case "$w" in
      embed) extra=(--items "$ITEMS" --embed-batch 32 --data "$DATA_DIR") ;;
      *) extra=() ;;
    esac
    if [ "$w" = train-bf16 ]; then
      # Our bf16 training on the CPU: f32 tensors, bf16 matmul inputs (AVX512-BF16).
      "$BIN" bench llm --model "$GGUF" --workload train --dtype bf16 --batch "$BATCH" --seq "$SEQ" \
        --runs "$RUNS" --threads "$THREADS" --device cpu --json | { grep '^{' || true; } \
        | sed 's/"workload":"train"/"workload":"train-bf16"/' | tee -a "$OURS_JSON" \
        || log "ours: workload $w failed (exit ${PIPESTATUS[0]})"
      continue
    fi
    if [ "$w" = beam ]; then
      for bb in $BEAM_BATCHES; do
        "$BIN" bench llm --model "$GGUF" --workload beam --beam-users "$OURS_BEAM_USERS" --beam-batch "$bb" \
          --runs "$RUNS" --threads "$THREADS" --device cpu --json | { grep '^{' || true; } | tee -a "$OURS_JSON" \
          || log "ours: workload $w failed (exit ${PIPESTATUS[0]})"
      done
      continue
    fi
    "$BIN" bench llm --model "$GGUF" --workload "$w" --batch "$BATCH" --seq "$SEQ" "${extra[@]}" \
      --runs "$RUNS" --threads "$THREADS" --device cpu --json | { grep '^{' || true; } | tee -a "$OURS_JSON" \
      || log "ours: workload $w failed (exit ${PIPESTATUS[0]})"
  done
}
# <<< run_ours

ours_available() {
  [ -x "$BIN" ] || return 1
  "$BIN" bench --help 2>/dev/null | grep -- '--json' >/dev/null && return 0
  "$BIN" bench llm --help 2>/dev/null | grep -- '--json' >/dev/null
}

# ---------------------------------------------------------------- table
print_table() {
  "$PY" - "$PEER_JSON" "$OURS_JSON" "$BATCH" <<'EOF'
import json, sys

def load(path, default_batch=None):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    d = json.loads(line)
                    key = d.get("workload", "?")
                    if key == "beam":  # peer reports one line per beam batch size
                        key = f"beam@b{d.get('batch') or default_batch}"
                    out[key] = d
    except FileNotFoundError:
        pass
    return out

peer, ours = load(sys.argv[1]), load(sys.argv[2], sys.argv[3])

def figures(d):
    rows = []
    for k, unit in (("tokens_per_s", "tok/s"), ("items_per_s", "items/s"), ("users_per_s", "users/s")):
        if d.get(k) is not None:
            rows.append((unit, k))
    return rows

def fmt(x):
    return "-" if x is None else (f"{x:,.1f}" if x >= 10 else f"{x:.3f}")

print(f"{'workload':<12} {'metric':<8} {'ours':>12} {'peer':>12} {'ours/peer':>10}")
print("-" * 58)
for key in list(peer) + [k for k in ours if k not in peer]:
    p, o = peer.get(key, {}), ours.get(key, {})
    metrics = figures(p) or figures(o)
    for unit, k in metrics:
        pv, ov = p.get(k), o.get(k)
        ratio = f"{ov / pv:.2f}x" if pv and ov else "-"
        print(f"{key:<12} {unit:<8} {fmt(ov):>12} {fmt(pv):>12} {ratio:>10}")
EOF
}

if [ "$PEER_ONLY" = 0 ] && ! ours_available; then
  echo "bench-peer: our binary is missing or has no 'bench --json': $BIN" >&2
  echo "bench-peer: build it with 'cargo build --release' (needs the 'llmbs bench llm' subcommand)," >&2
  echo "bench-peer: set BIN=..., or pass --peer-only to run only the PyTorch side." >&2
  exit 3
fi

OUT_DIR="$ROOT/runs/bench-peer/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT_DIR"
PEER_JSON="$OUT_DIR/peer.jsonl"
OURS_JSON="$OUT_DIR/ours.jsonl"
: >"$PEER_JSON"; : >"$OURS_JSON"

run_peer
if [ "$PEER_ONLY" = 1 ]; then
  log "--peer-only: skipping our side"
else
  run_ours
fi
print_table
log "results in $OUT_DIR"
