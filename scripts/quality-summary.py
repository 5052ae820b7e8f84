"""quality.json of scripts/gpu-quality-run.sh from what its stages wrote so far.

Usage: python3 scripts/quality-summary.py OUTDIR PEAK_TFLOPS > quality.json
"""
import glob
import json
import os
import sys

out, peak = sys.argv[1], float(sys.argv[2])
run = f"{out}/run"


def load(p):
    try:
        return json.load(open(p))
    except Exception as e:
        return {"missing": f"{p}: {e}"}


doc = {"stage_seconds": {}}
if os.path.exists(f"{out}/stage-seconds.txt"):
    doc["stage_seconds"] = dict(l.split() for l in open(f"{out}/stage-seconds.txt") if l.strip())
doc["fused_check"] = load(f"{out}/fused-check.json")
doc["fused_kernels_used"] = os.environ.get("LLMBS_NO_FUSED") is None
tr = load(f"{run}/train/initial/report.json")
doc["train_initial"] = {k: tr.get(k) for k in (
    "steps", "total_steps", "ended", "seconds", "median_tokens_per_s", "loss_first_10_steps",
    "loss_last_10_steps", "best", "validations", "trainable_parameters", "device",
    "compute_dtype", "peak_memory")}
# MFU = 6 x trainable parameters x tokens/s over the peak (full tuning: every weight, the grown
# embedding and head, and the GCT projectors).
params = tr.get("trainable_parameters") or 0
tps = tr.get("median_tokens_per_s") or 0
doc["mfu"] = {"params": params, "tokens_per_s": tps, "peak_tflops": peak,
              "mfu": 6 * params * tps / (peak * 1e12)}
an = load(f"{run}/train/anneal/report.json")
doc["train_anneal"] = {k: an.get(k) for k in ("steps", "seconds", "median_tokens_per_s", "best")}
doc["eval"] = [load(p) for p in sorted(glob.glob(f"{run}/eval/test-*.json"))]
doc["baselines"] = [load(p) for p in sorted(glob.glob(f"{run}/eval/baselines-*.json"))]
mem = f"{out}/gpu-memory.csv"
if os.path.exists(mem):
    used = [float(l.split(",")[1]) for l in open(mem) if l.count(",") == 1]
    doc["peak_gpu_memory_mib"] = max(used) if used else None
print(json.dumps(doc, indent=1))
