#!/usr/bin/env bash
# Indexing benchmark (paper 3.2 at catalogue scale; not a test). Builds dual-source IDs for a
# synthetic catalogue: semantic and behavior tables of N x DIM f32 values (seeded Gaussian
# mixtures, generated in memory by the hidden `llmbs index --synthetic N --dim DIM`), unit mode,
# k = 256, 2 + 2 levels, balanced, L2-normalised. Reports wall time and peak RSS from
# /usr/bin/time -v, next to the size of the input tables.
#
#   scripts/bench-index.sh                      # 1,000,000 items x 64 dims, every core
#   N=200000 THREADS=2 scripts/bench-index.sh   # smaller / pinned thread count
#   OUT=/tmp/bench scripts/bench-index.sh       # keep the index, stats.json and time.txt
#
# Bar (issue 6): 1M x 64 in under 10 minutes, memory a small multiple of the input.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
DIM=${DIM:-64}
THREADS=${THREADS:-0}
MODE=${MODE:-unit}
K=${K:-256}
SEED=${SEED:-42}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

[ -x /usr/bin/time ] || { echo "bench-index: /usr/bin/time (GNU time) is needed" >&2; exit 1; }
cargo build --release --quiet

/usr/bin/time -v -o "$OUT/time.txt" target/release/llmbs index \
    --synthetic "$N" --dim "$DIM" --mode "$MODE" --k "$K" --seed "$SEED" --threads "$THREADS" \
    --out "$OUT/synthetic.index.json" --stats "$OUT/stats.json" | tee "$OUT/summary.txt"

python3 - "$OUT" "$N" "$DIM" <<'EOF'
import json, sys
out, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = {}
for line in open(f"{out}/time.txt"):
    k, _, v = line.strip().rpartition(": ")
    t[k] = v
wall = t["Elapsed (wall clock) time (h:mm:ss or m:ss)"]
secs = 0.0
for part in wall.split(":"):
    secs = secs * 60 + float(part)
rss_mb = int(t["Maximum resident set size (kbytes)"]) / 1024
s = json.load(open(f"{out}/stats.json"))
tables = 0 if s["config"]["mode"] == "random" else (2 if s["config"]["mode"] == "unit" else 1)
input_mb = n * dim * 4 * tables / 2**20
levels = [
    f'{src["source"]}{i + 1}: {lv["seconds"]:.1f}s ({lv["kmeans_runs"]} k-means, {lv["mean_iters"]:.1f} iters avg)'
    for src in s["build"]["sources"] for i, lv in enumerate(src["per_level"])
]
print(json.dumps({
    "bench": "index", "items": n, "dim": dim, "mode": s["config"]["mode"], "k": s["config"]["k"],
    "cpu": t.get("Percent of CPU this job got"), "wall_s": round(secs, 1),
    "user_s": float(t["User time (seconds)"]), "peak_rss_mb": round(rss_mb),
    "input_mb": round(input_mb), "rss_over_input": round(rss_mb / input_mb, 2) if input_mb else None,
    "distinct_before": s["distinct_ids_before"], "items_disambiguated": s["items_disambiguated"],
    "unique": s["distinct_ids_after"] == s["items"],
}))
print("per level: " + "; ".join(levels))
print(f"files in {out}")
EOF
