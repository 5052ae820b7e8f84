# Sourced by scripts/gpu-quality-run.sh (needs BIN, DEVICE, OUT): defines fused_check.
#
# The fused training kernels (llm::ops) against the composed candle ops on this device before
# anything trains: the trainer's own step (`llmbs bench llm --workload step`) on a synthetic
# model, 4 AdamW steps at lr 1e-3 each way, f32 without TF32 and bf16: the first loss, the loss
# change and every gradient norm must agree. Writes OUT/fused-check.json; returns non-zero on a
# disagreement or a crash of the fused run (the caller then sets LLMBS_NO_FUSED=1).
fused_check() {
  local dtype mode
  for dtype in f32 bf16; do
    for mode in fused composed; do
      env $([ $mode = composed ] && echo LLMBS_NO_FUSED=1) LLMBS_NO_TF32=1 "$BIN" bench llm \
        --model "${CHECK_MODEL:-synthetic:smollm2-135m}" --workload step --tune full --batch 8 \
        --seq 128 --runs 3 --step-lr 1e-3 --device "$DEVICE" --dtype $dtype --json \
        > "$OUT/fused-check-$dtype-$mode.jsonl" 2> "$OUT/fused-check-$dtype-$mode.err"
    done
  done
  python3 - "$OUT" > "$OUT/fused-check.json" <<'PY'
import json, math, sys
out = sys.argv[1]
def row(dtype, mode):
    try:
        rows = [json.loads(l) for l in open(f"{out}/fused-check-{dtype}-{mode}.jsonl") if l.startswith("{")]
        return rows[-1]["losses"], rows[-1]["grad_norms"]
    except Exception:
        return None
rel = lambda a, b: abs(a - b) / max(abs(b), 1e-12)
doc, ok = {}, True
# tolerances: first loss, loss change over 3 AdamW steps at lr 1e-3, each gradient norm
for dtype, tol in (("f32", (1e-3, 0.02, 0.01)), ("bf16", (2e-2, 0.1, 0.05))):
    f, c = row(dtype, "fused"), row(dtype, "composed")
    r = {"fused": f, "composed": c}
    if f is None or c is None or not all(map(math.isfinite, f[0] + f[1] + c[0] + c[1])):
        r["ok"] = c is None  # nothing to compare against: keep the fused path
    else:
        (fl, fg), (cl, cg) = f, c
        r["first_loss_rel"] = rel(fl[0], cl[0])
        r["loss_change_rel"] = rel(fl[-1] - fl[0], cl[-1] - cl[0])
        r["grad_norm_rel"] = max(rel(a, b) for a, b in zip(fg, cg))
        r["ok"] = (r["first_loss_rel"] <= tol[0] and r["loss_change_rel"] <= tol[1]
                   and r["grad_norm_rel"] <= tol[2])
    ok = ok and r["ok"]
    doc[dtype] = r
doc["fused_ok"] = ok
print(json.dumps(doc))
PY
  grep -q '"fused_ok": true' "$OUT/fused-check.json"
}
