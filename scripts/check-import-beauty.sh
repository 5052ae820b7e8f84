#!/usr/bin/env bash
# `llmbs data import --from csv` on the real Beauty benchmark (issue 34): ../shared/data/beauty
# written out as the raw files a user would have (an interactions CSV of user, item ASIN and a
# time, plus an item table of ASIN, title and categories), imported with the default 5-core
# preprocessing, and compared with the original: the same 22,363 users, 12,101 items and
# 198,502 interactions, every user's sequence the same items in the same order, every item's
# title and categories unchanged up to collapsed whitespace. The times are each item's position in its user's sequence
# (the benchmark publishes the order, not the review times), and rows are shuffled, so the
# import's chronological sort and stable tie-break are exercised too.
#
# Usage: scripts/check-import-beauty.sh        (BIN=target/release/llmbs, WORK=/tmp/llmbs-beauty-csv)
# Prints the import's own summary, then "check-import-beauty: identical" or the first difference.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release/llmbs}"
WORK="${WORK:-/tmp/llmbs-beauty-csv}"
DATA="${DATA:-$ROOT/../shared/data/beauty}"
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release, or set BIN)" >&2; exit 1; }
rm -rf "$WORK"; mkdir -p "$WORK"

python3 - "$DATA" "$WORK" <<'PY'
import csv, json, random, sys
data, work = sys.argv[1:3]
inter = json.load(open(f"{data}/Beauty.inter.json"))
items = json.load(open(f"{data}/Beauty.item.json"))
rows = []
for u, seq in inter.items():
    for t, i in enumerate(seq):
        # Ties would be broken by input order: give every event a distinct time.
        rows.append((f"U{u}", items[str(i)]["asin"], 1_400_000_000 + 1000 * t))
random.Random(0).shuffle(rows)
with open(f"{work}/events.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["user_id", "item_id", "timestamp"])
    w.writerows(rows)
with open(f"{work}/items.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["item_id", "title", "categories"])
    for k in sorted(items, key=int):
        w.writerow([items[k]["asin"], items[k]["title"], items[k]["categories"]])
print(f"check-import-beauty: wrote {len(rows)} events of {len(inter)} users, {len(items)} items")
PY

"$BIN" data import --from csv "$WORK/events.csv" "$WORK/items.csv" --out "$WORK/imported" \
  --name Beauty --user-col user_id --item-col item_id --time-col timestamp \
  --title-col title --categories-col categories
"$BIN" data stats --data "$WORK/imported"

python3 - "$DATA" "$WORK/imported" <<'PY'
import json, sys
data, out = sys.argv[1:3]
inter = json.load(open(f"{data}/Beauty.inter.json"))
items = json.load(open(f"{data}/Beauty.item.json"))
got_inter = json.load(open(f"{out}/Beauty.inter.json"))
got_items = json.load(open(f"{out}/Beauty.item.json"))
# The import names each item by its id column (item_id), where the benchmark says asin.
want = sorted(tuple(items[str(i)]["asin"] for i in s) for s in inter.values())
got = sorted(tuple(got_items[str(i)]["item_id"] for i in s) for s in got_inter.values())
n = sum(map(len, got))
print(f"check-import-beauty: imported {len(got_inter)} users, {len(got_items)} items, {n} interactions")
assert len(got) == len(want), f"{len(got)} users, expected {len(want)}"
for g, w in zip(got, want):
    assert g == w, f"first differing sequence: {g} vs {w}"
# The import collapses runs of whitespace (and drops HTML tags, which Beauty has none of):
# texts are compared after the same collapse, and the ones it changed are counted.
by_asin = {it["asin"]: it for it in items.values()}
collapse = lambda t: " ".join(t.split())
changed = 0
for it in got_items.values():
    w = by_asin[it["item_id"]]
    for k in ("title", "categories"):
        assert it[k] == collapse(w[k]), f"{it['item_id']} {k}: {it[k]!r} vs {w[k]!r}"
        changed += it[k] != w[k]
print(f"check-import-beauty: identical (users' sequences in order; titles and categories, "
      f"{changed} of them with runs of whitespace collapsed)")
PY
