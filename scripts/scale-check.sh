#!/usr/bin/env bash
# The prepared GPU check of "bigger models and more GPUs" (docs/scale.md): synthetic Llama-7B
# embedding and one LoRA training step on one GPU, and the NCCL data-parallel path with one
# rank against the plain path.
#
# Here (no GPU):
#   scripts/build-cuda.sh --nccl && scripts/scale-check.sh --pack
#   -> dev-carry/scale/ (the gzipped NCCL CUDA binary + Beauty, ~26 MB): one `run` call with
#      carry ["dev-carry/scale"] and command `scripts/scale-check.sh /tmp/sc $OUT`.
# On the GPU machine:
#   scripts/scale-check.sh OUTDIR [RESULTS]   (about 6 minutes on an H200)
#   writes OUTDIR/scale.jsonl (one JSON line per check) and OUTDIR/log.txt, copied to RESULTS.
# Knobs: EMBED_LIMIT (4096 items), STEP_RUNS (3), SKIP_PLAIN_STEP=1 (no un-checkpointed step).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY="${CARRY:-dev-carry}/scale"

if [ "${1:-}" = --pack ]; then
  rm -rf "$CARRY" && mkdir -p "$CARRY/beauty"
  cp target-cuda/llmbs-cuda.gz "$CARRY/"
  cp ../shared/data/beauty/Beauty.inter.json ../shared/data/beauty/Beauty.item.json "$CARRY/beauty/"
  du -sh "$CARRY"
  echo 'carry: ["dev-carry/scale"]   command: scripts/scale-check.sh /tmp/sc $OUT'
  exit 0
fi

OUT="${1:?usage: scripts/scale-check.sh OUTDIR [RESULTS] | --pack}"
RESULTS="${2:-}"
mkdir -p "$OUT" ${RESULTS:+"$RESULTS"}
BIN="$OUT/llmbs"
DATA="$CARRY/beauty"
log() { echo "[scale-check $(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt" >&2; }
save() { [ -n "$RESULTS" ] && cp "$OUT/log.txt" "$OUT/scale.jsonl" "$RESULTS/" 2>/dev/null; return 0; }
[ -x "$BIN" ] || { gunzip -c "$CARRY/llmbs-cuda.gz" > "$BIN" && chmod +x "$BIN"; }

# The CUDA libraries (and NCCL's) live in PyTorch's environment on the GPU machine.
libdirs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
want = ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudart.so.13",
        "libnvrtc.so.13", "libnccl.so.2")
dirs = []
for r in roots:
    for w in want:
        for p in glob.glob(os.path.join(r, "nvidia", "**", w + "*"), recursive=True):
            if os.path.dirname(p) not in dirs:
                dirs.append(os.path.dirname(p))
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$BIN" | grep "not found" | tee -a "$OUT/log.txt"
log "gpu: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1)"
: > "$OUT/scale.jsonl"

# 1. Synthetic Llama-7B embedding in bf16: tokens/s, peak memory, the whole catalogue's time.
timeout 300 "$BIN" embed --data "$DATA" --model synthetic:llama-7b --device cuda --dtype bf16 \
  --limit "${EMBED_LIMIT:-4096}" --batch 64 --out "$OUT/z7b.safetensors" > "$OUT/embed.log" 2>&1
log "embed rc=$? $(tail -n 3 "$OUT/embed.log" | tr '\n' ' ')"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['check']='embed-7b'; print(json.dumps(d))" \
  "$OUT/z7b.json" >> "$OUT/scale.jsonl" 2>> "$OUT/log.txt"
save

# 2. One LoRA step of synthetic Llama-7B at 16 x 128 in bf16, checkpointed (and not), with the
#    full fine-tuning memory estimate in the same line.
for ck in --checkpoint-activations ""; do
  [ -z "$ck" ] && [ "${SKIP_PLAIN_STEP:-0}" = 1 ] && continue
  timeout 300 "$BIN" bench llm --model synthetic:llama-7b --workload step --tune lora $ck \
    --batch 16 --seq 128 --runs "${STEP_RUNS:-3}" --device cuda --dtype bf16 --json \
    >> "$OUT/scale.jsonl" 2>> "$OUT/step.err"
  log "step ${ck:-plain} rc=$? $(tail -c 400 "$OUT/scale.jsonl")"
  save
done

# 3. The NCCL path with one rank gives the plain path's losses: a tiny run (200 Beauty users,
#    synthetic:tiny), then the same 4 steps with --device cuda and with --devices cuda:0.
R="$OUT/nccl-run"; S="$OUT/slice"
python3 - "$DATA" "$S" <<'PY'
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
inter = json.load(open(f"{src}/Beauty.inter.json"))
items = json.load(open(f"{src}/Beauty.item.json"))
kept = dict(list(inter.items())[:200])
used = {str(i) for s in kept.values() for i in s}
os.makedirs(dst, exist_ok=True)
json.dump(kept, open(f"{dst}/Beauty.inter.json", "w"))
json.dump({k: v for k, v in items.items() if k in used}, open(f"{dst}/Beauty.item.json", "w"))
PY
timeout 300 "$BIN" pipeline --config tiny --data "$S" --model synthetic:tiny --run "$R" --device cuda \
  > "$OUT/pipeline.log" 2>&1
log "tiny pipeline rc=$?"
for how in "--device cuda" "--devices cuda:0"; do
  tag=$(echo "$how" | tr -d ' -:'); 
  timeout 200 "$BIN" train --stage initial --run "$R" --data "$S" --model synthetic:tiny $how --overwrite \
    --steps 4 --batch-size 16 --micro-batch 4 --lr 1e-3 --warmup-steps 1 --eval-every 4 \
    --valid-users 0 --max-history 5 > "$OUT/train-$tag.log" 2>&1
  log "train $how rc=$?"
  cp "$R/train/initial/log.jsonl" "$OUT/log-$tag.jsonl" 2>/dev/null
done
python3 - "$OUT" >> "$OUT/scale.jsonl" 2>> "$OUT/log.txt" <<'PY'
import json, sys
out = sys.argv[1]
def losses(tag):
    return [json.loads(l)["loss"] for l in open(f"{out}/log-{tag}.jsonl") if '"loss"' in l]
a, b = losses("devicecuda"), losses("devicescuda0")
diff = max(abs(x - y) for x, y in zip(a, b)) if a and len(a) == len(b) else None
print(json.dumps({"check": "nccl-one-rank", "plain": a, "nccl": b, "max_abs_diff": diff,
                  "pass": diff is not None and diff < 1e-5}))
PY
log "nccl one rank: $(tail -n 1 "$OUT/scale.jsonl")"
log "done"
save
cat "$OUT/scale.jsonl"
