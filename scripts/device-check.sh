#!/usr/bin/env bash
# The one prepared script for the GPU machine (CUDA 13 driver, PyTorch, no Rust, no network).
# Usage: scripts/device-check.sh OUTDIR [RESULTS]
#   OUTDIR gets everything; RESULTS (e.g. the device tool's $OUT, which returns at most 8 files)
#   gets device-check.json and log.txt after every stage, and results.tgz (all small files) at the end.
# Expects (carried in the ignored folder dev-carry/, see scripts/device-pack.sh):
#   dev-carry/p1/llmbs-cuda.gz        the CUDA binary from scripts/build-cuda.sh
#   dev-carry/p1/model.gguf.part1, dev-carry/p2/model.gguf.part2   the default GGUF in two parts
#   dev-carry/p2/beauty/              Beauty.inter.json, Beauty.item.json (+ Beauty.letter-index.json
#                                     with LETTER=1 for STAGE=full/eval)
#   dev-carry/p2/seed/                the CPU run's index and gzipped Z^b (STAGE=train)
# (two calls back to back, within the machine's 30 s idle release: the first carries p1 and runs
# STAGE=smoke, the second carries p2 and runs STAGE=train, or STAGE=full)
# Writes OUTDIR/device-check.json (+ the raw JSON lines and logs).
set -uo pipefail
OUT="${1:?usage: scripts/device-check.sh OUTDIR [RESULTS]}"
RESULTS="${2:-}"
mkdir -p "$OUT" ${RESULTS:+"$RESULTS"}
CARRY="${CARRY:-dev-carry}"
BIN="$CARRY/llmbs"
STAGE="${STAGE:-full}"     # smoke: binary + GPU visible only; eval: only the full test-set eval; full: everything;
                           # train: the initial stage on Beauty (needs p3), then its full test-set eval
log() { echo "[device-check $(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt" >&2; }

if [ ! -x "$BIN" ]; then
  if [ ! -f "$CARRY/p1/llmbs-cuda.gz" ]; then
    log "no $CARRY/p1/llmbs-cuda.gz: the machine was released after call 1 (p1 is gone); carry p1 again"
    exit 3
  fi
  gunzip -c "$CARRY/p1/llmbs-cuda.gz" > "$BIN" && chmod +x "$BIN"
fi

# CUDA user-space libraries live in PyTorch's environment here: put their folders on the path.
libdirs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
try:
    import torch; roots.append(os.path.dirname(os.path.dirname(torch.__file__)))
except Exception:
    pass
want = ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudart.so.13", "libnvrtc.so.13")
dirs = []
for r in roots:
    for w in want:
        for p in glob.glob(os.path.join(r, "nvidia", "**", w + "*"), recursive=True):
            d = os.path.dirname(p)
            if d not in dirs:
                dirs.append(d)
print(":".join(dirs))
PY
)
if [ -z "$libdirs" ]; then
  libdirs=$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1 | xargs -r dirname)
fi
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$BIN" > "$OUT/ldd.txt" 2>&1
if grep -q "not found" "$OUT/ldd.txt"; then log "missing libraries:"; grep "not found" "$OUT/ldd.txt" | tee -a "$OUT/log.txt"; fi
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1
log "gpu: $(cat "$OUT/nvidia-smi.txt")"
"$BIN" --version > "$OUT/version.txt" 2>&1
log "binary: $(cat "$OUT/version.txt") $(cat "$CARRY/p1/llmbs-cuda.commit" 2>/dev/null)"
nproc > "$OUT/cpu-cores.txt"
: > "$OUT/bench.jsonl"

# Quick proof the CUDA path runs at all (random weights, no model file needed).
"$BIN" bench llm --random-weights --workload forward --batch 4 --seq 64 --runs 2 --device cuda --json \
  > "$OUT/smoke.jsonl" 2> "$OUT/smoke.err"
log "smoke rc=$? $(cat "$OUT/smoke.jsonl")"
if [ "$STAGE" = smoke ]; then [ -n "$RESULTS" ] && cp "$OUT"/*.txt "$OUT"/smoke.* "$RESULTS/"; exit 0; fi

GGUF="$CARRY/model.gguf"
if [ ! -f "$GGUF" ]; then cat "$CARRY/p1/model.gguf.part1" "$CARRY/p2/model.gguf.part2" > "$GGUF"; fi
if [ -f "$CARRY/p2/model.sha256" ] && [ "$(sha256sum "$GGUF" | cut -d' ' -f1)" != "$(cat "$CARRY/p2/model.sha256")" ]; then
  log "the model reassembled from p1 and p2 does not match its sha256 (parts from different packs?)"
  rm -f "$GGUF"; exit 4
fi
log "model sha256 $(sha256sum "$GGUF" | cut -c1-16)"

summarize() {
python3 - "$OUT" > "$OUT/device-check.json" 2>> "$OUT/log.txt" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/bench.jsonl") if l.strip().startswith("{")]
doc = {
    "gpu": open(f"{out}/nvidia-smi.txt").read().strip(),
    "binary": open(f"{out}/version.txt").read().strip(),
    "cpu_cores": open(f"{out}/cpu-cores.txt").read().strip(),
    "parity": json.load(open(f"{out}/parity.json")) if os.path.exists(f"{out}/parity.json") else None,
    "bench": rows,
}
cpu = {r["workload"]: r["tokens_per_s"] for r in rows if r["device"] == "cpu" and "tokens_per_s" in r}
doc["gpu_over_cpu"] = {f'{r["workload"]}-{r["dtype"]}': r["tokens_per_s"] / cpu[r["workload"]]
                       for r in rows if r["device"] == "cuda" and r["workload"] in cpu}
try:
    import glob
    doc["eval"] = json.load(open(sorted(glob.glob(f"{out}/eval-run/eval/test-*.json"))[0]))
except Exception as e:
    doc["eval"] = f"no report: {e}"
print(json.dumps(doc, indent=1))
PY
[ -n "$RESULTS" ] && cp "$OUT/device-check.json" "$OUT/log.txt" "$RESULTS/"
return 0
}

# The quality run (issue 15): the initial stage on the index and Z^b carried in dev-carry/p2/seed
# (the CPU run's `llmbs pipeline --config beauty --to index`; Z^s is embedded again here), the
# anneal stage, the test users with the adapter on and off, the baselines, within DEADLINE_S.
if [ "$STAGE" = train ]; then
  BIN="$BIN" GGUF="$GGUF" DATA="$CARRY/p2/beauty" RUN_SEED="$CARRY/p2/seed" \
    DEADLINE_S="${DEADLINE_S:-$(( 570 - SECONDS ))}" scripts/gpu-quality-run.sh "$OUT/quality" "$RESULTS"
  log "quality run done"
  exit 0
fi

if [ "$STAGE" != eval ]; then
# 1. embed parity, GPU vs CPU, 256 Beauty items.
for cfg in "cpu f32" "cuda f32" "cuda bf16"; do
  set -- $cfg
  "$BIN" embed --data "$CARRY/p2/beauty" --model "$GGUF" --limit 256 --device "$1" --dtype "$2" \
    --out "$OUT/emb-$1-$2.safetensors" 2>> "$OUT/embed.log"
  log "embed $1 $2 rc=$?"
done
python3 - "$OUT" > "$OUT/parity.json" <<'PY'
import json, struct, sys
import numpy as np
out = sys.argv[1]
def load(p):
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n)); t = h["embeddings"]
        a, b = t["data_offsets"]; f.seek(8 + n + a)
        return np.frombuffer(f.read(b - a), dtype=np.float32).reshape(t["shape"])
ref = load(f"{out}/emb-cpu-f32.safetensors")
res = {}
for name in ("cuda-f32", "cuda-bf16"):
    x = load(f"{out}/emb-{name}.safetensors")
    cos = (ref * x).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(x, axis=1))
    res[name] = {"items": int(len(cos)), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
res["pass_f32"] = res["cuda-f32"]["min_cosine"] >= 0.999
res["pass_bf16"] = res["cuda-bf16"]["min_cosine"] >= 0.99
print(json.dumps(res))
PY
log "parity: $(cat "$OUT/parity.json")"
summarize

# 2. throughput: GPU f32 / bf16 at 32 x 128, and the device's CPU for a ratio.
for dt in f32 bf16; do
  "$BIN" bench llm --model "$GGUF" --workload forward,backward,train,embed --data "$CARRY/p2/beauty" \
    --items 1024 --embed-batch 64 --batch 32 --seq 128 --runs 3 --device cuda --dtype "$dt" --json \
    >> "$OUT/bench.jsonl" 2>> "$OUT/bench.err"
  log "bench cuda $dt rc=$?"
done
timeout 150 "$BIN" bench llm --model "$GGUF" --workload forward,backward --batch 32 --seq 128 --runs 1 \
  --device cpu --json >> "$OUT/bench.jsonl" 2>> "$OUT/bench.err"
log "bench cpu rc=$?"
summarize

# 3. beam search users/s (beam 20, LC-Rec-style workload) and the whole Beauty test set with the
#    untrained backbone + fresh ID rows on LETTER's index (the only index carried here).
for bu in "1 16" "64 256"; do
  set -- $bu; bb=$1
  timeout 150 "$BIN" bench llm --model "$GGUF" --workload beam --beam-users "$2" --beam-batch "$bb" --runs 2 \
    --device cuda --dtype f32 --json >> "$OUT/bench.jsonl" 2>> "$OUT/bench.err"
  log "bench beam batch $bb rc=$?"
done
fi
timeout "${EVAL_TIMEOUT:-400}" "$BIN" eval --run "$OUT/eval-run" --data "$CARRY/p2/beauty" --model "$GGUF" \
  --adapter off --label test-untrained --index "${EVAL_INDEX:-$CARRY/p2/beauty/Beauty.letter-index.json}" --split test --batch "${EVAL_BATCH:-128}" --device cuda --dtype f32 \
  > "$OUT/eval.log" 2>&1
log "eval rc=$? $(grep -m1 'users/s' "$OUT/eval.log")"
summarize
log "done"
if [ -n "$RESULTS" ]; then
  cp "$OUT/log.txt" "$RESULTS/"
  tar czf "$RESULTS/results.tgz" -C "$OUT" --exclude='*.safetensors' --exclude='predictions*.jsonl' . 2>/dev/null
  gzip -c "$OUT/eval-run/eval/test-untrained.predictions.jsonl" > "$RESULTS/predictions.jsonl.gz" 2>/dev/null
fi
cat "$OUT/device-check.json"
