#!/usr/bin/env bash
# `llmbs data import` at scale: a synthetic 10-million-interaction CSV and a 1-million-line
# gzipped Amazon-2023-style review file (with a meta file), each imported with the default
# preprocessing, timed with /usr/bin/time -v (wall time, peak resident memory).
#
# Usage:
#   scripts/bench-import.sh            # generate (once) and import both
#   scripts/bench-import.sh csv        # only the CSV; `amazon2023` only the Amazon file
#
# Environment (all optional):
#   BIN        the binary (default: target/release/llmbs, built with `cargo build --release`)
#   WORK       scratch folder for the inputs and outputs (default: /tmp/llmbs-bench-import)
#   CSV_ROWS   interactions in the CSV (default 10000000)
#   AZ_LINES   review lines in the Amazon file (default 1000000)
#   THREADS    RAYON/OMP thread cap (default 1: the import is single-threaded; the figure is
#              per core)
#
# Output: one line per import, `format rows wall_s peak_MiB rows_per_s`, plus the import's own
# step table; results also in $WORK/results.txt. The inputs are deterministic (seeded), so
# reruns import the same bytes.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release/llmbs}"
WORK="${WORK:-/tmp/llmbs-bench-import}"
CSV_ROWS="${CSV_ROWS:-10000000}"
AZ_LINES="${AZ_LINES:-1000000}"
export RAYON_NUM_THREADS="${THREADS:-1}" OMP_NUM_THREADS="${THREADS:-1}"
WHAT="${1:-all}"

[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release, or set BIN)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is needed (apt-get install time)" >&2; exit 1; }
mkdir -p "$WORK"

# 10M interactions: 1M users with 10 each (uniformly 5..15), 200k items drawn from a skewed
# (Zipf-like) distribution so the 5-core removes a realistic tail; seconds since 2015.
gen_csv() {
    python3 - "$WORK/events.csv" "$CSV_ROWS" <<'PY'
import random, sys
path, rows = sys.argv[1], int(sys.argv[2])
rng = random.Random(34)
users = max(1, rows // 10)
items = max(1, rows // 50)
with open(path, "w", buffering=1 << 20) as f:
    f.write("user_id,item_id,timestamp,rating\n")
    written, u = 0, 0
    while written < rows:
        n = min(rng.randint(5, 15), rows - written)
        t = 1420070400 + rng.randrange(200_000_000)
        uid = "U%07d" % (u % users)
        lines = []
        for _ in range(n):
            t += rng.randrange(1, 86400 * 30)
            item = int(items * rng.random() ** 2.5)
            lines.append("%s,I%06d,%d,%d\n" % (uid, item, t, rng.randint(1, 5)))
        f.write("".join(lines))
        written += n
        u += 1
PY
}

# 1M review lines in the 2023 layout (review text included, as the real files carry it), and
# a meta line per product with title, categories, store and a description list.
gen_amazon() {
    python3 - "$WORK/Synthetic.jsonl.gz" "$WORK/meta_Synthetic.jsonl.gz" "$AZ_LINES" <<'PY'
import gzip, json, random, sys
reviews, meta, lines = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(2023)
users = max(1, lines // 8)
items = max(1, lines // 20)
words = "soft light fresh gentle daily cream serum gel mask oil balm tint shine matte".split()
with gzip.open(reviews, "wt", compresslevel=6) as f:
    for k in range(lines):
        u = int(users * rng.random() ** 1.5)
        p = int(items * rng.random() ** 2.0)
        rec = {"rating": float(rng.randint(1, 5)), "title": " ".join(rng.choices(words, k=3)),
               "text": " ".join(rng.choices(words, k=40)), "images": [],
               "asin": "B%09d" % p, "parent_asin": "P%09d" % p, "user_id": "A%012d" % u,
               "timestamp": 1500000000000 + rng.randrange(10**11), "helpful_vote": 0,
               "verified_purchase": True}
        f.write(json.dumps(rec) + "\n")
with gzip.open(meta, "wt", compresslevel=6) as f:
    for p in range(items):
        rec = {"main_category": "All Beauty", "title": "Product %d %s" % (p, rng.choice(words)),
               "average_rating": 4.2, "rating_number": 10, "features": [],
               "description": [" ".join(rng.choices(words, k=20))], "price": None,
               "images": [], "videos": [], "store": "Store %d" % (p % 500),
               "categories": ["Beauty", rng.choice(words)], "details": {},
               "parent_asin": "P%09d" % p, "bought_together": None}
        f.write(json.dumps(rec) + "\n")
PY
}

# Runs one import under /usr/bin/time -v and prints `format rows wall_s peak_MiB rows_per_s`.
timed() {
    local label="$1" rows="$2"; shift 2
    local out="$WORK/out-$label" log="$WORK/time-$label.txt"
    rm -rf "$out"
    /usr/bin/time -v "$BIN" data import "$@" --out "$out" 2> "$log"
    local wall peak
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log" |
        awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
    peak=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$log")
    local line
    line=$(awk -v l="$label" -v r="$rows" -v w="$wall" -v p="$peak" \
        'BEGIN { printf "%s %d %.2f %d %.0f\n", l, r, w, p, r / w }')
    echo "$line" | tee -a "$WORK/results.txt"
}

echo "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" \
    | tee -a "$WORK/results.txt"
echo "# format rows wall_s peak_MiB rows_per_s" | tee -a "$WORK/results.txt"
if [ "$WHAT" = all ] || [ "$WHAT" = csv ]; then
    [ -s "$WORK/events.csv" ] || gen_csv
    timed csv "$CSV_ROWS" --from csv "$WORK/events.csv"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = amazon2023 ]; then
    [ -s "$WORK/Synthetic.jsonl.gz" ] || gen_amazon
    timed amazon2023 "$AZ_LINES" --from amazon2023 "$WORK/Synthetic.jsonl.gz" \
        "$WORK/meta_Synthetic.jsonl.gz"
fi
