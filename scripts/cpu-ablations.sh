#!/usr/bin/env bash
# The paper's ablations (LLM-BS Table 4 and Figure 5) on the CPU recipe at a fixed budget (issue 33 item 5):
# the `beauty-smoke` recipe (4 layers, compact prompts, behavior input, SASRec Z^b, Z^s after 4
# layers) trained for MINUTES of CPU each, with an Annealing Adapter stage of ANNEAL minutes on
# the base run, every arm ranked on the same SPLIT users (LIMIT, seed SEED) with beam 20:
#   base            dual-source index (unit), GCT on; evaluated with its adapter on and off
#   index-semantic  the index from Z^s only     (--ablation index=semantic)
#   index-behavior  the index from Z^b only     (--ablation index=behavior)
#   gct-off         lambda_s = lambda_b = 0     (--ablation gct=off)
#   index-random    random item IDs, no DKI     (--ablation index=random; not in the default list)
# Ablation arms link the base run's embeddings and SASRec and train no anneal stage, so each
# initial model is compared with the base's adapter-off ranking; the adapter is compared on the
# base model alone (on minus off). Paired differences with standard errors (`llmbs paired`) go
# to $OUT/paired-initial.md and $OUT/paired-anneal.md.
# REUSE=RUN links that run's embeddings, SASRec and index where their settings are the same (a
# beauty-smoke run), so only training and evaluation take time.
# CONFIG=FILE runs a recorded config instead (e.g. an earlier OUT's config.json, whose recipe
# the embedded beauty-smoke has since left); MINUTES, ANNEAL, SPLIT, LIMIT, SEED and REUSE then
# come from the file.
# Usage: MINUTES=10 ANNEAL=3 SPLIT=test LIMIT=2000 OUT=runs/ablations [REUSE=runs/beauty-smoke] scripts/cpu-ablations.sh [ARM ...]
# Session 18's random-index row, on session 13's recipe, base rerun beside it:
#   CONFIG=runs/ablations/config.json OUT=runs/ablations-s18 scripts/cpu-ablations.sh base index-random
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-10}"
ANNEAL="${ANNEAL:-3}"
SPLIT="${SPLIT:-test}"
LIMIT="${LIMIT:-2000}"
SEED="${SEED:-0}"
OUT="${OUT:-runs/ablations}"
DATA="${DATA:-../shared/data/beauty}"
BIN="${BIN:-target/release/llmbs}"
ARMS=(base index-semantic index-behavior gct-off)
[ $# -gt 0 ] && ARMS=("$@")
mkdir -p "$OUT"
cfg="$OUT/config.json"
if [ -n "${CONFIG:-}" ]; then
  [ "$(realpath "$CONFIG")" = "$(realpath -m "$cfg")" ] || cp "$CONFIG" "$cfg"
  read -r SPLIT LIMIT SEED < <(python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["eval"][0]; print(e["split"], e["limit"], e["seed"])' "$cfg")
else
python3 - "$MINUTES" "$ANNEAL" "$SPLIT" "$LIMIT" "$SEED" "$DATA" "${REUSE:-}" >"$cfg.tmp" <<'PY'
import json, sys
minutes, anneal, split, limit, seed, data, reuse = sys.argv[1:8]
c = json.load(open("configs/beauty-smoke.json"))
c["name"] = "cpu-ablations"
c["description"] = (f"beauty-smoke's recipe at {minutes} training minutes and a {anneal}-minute "
                    f"Annealing Adapter, ranked on {limit} {split} users (scripts/cpu-ablations.sh)")
c["data"] = data
c["reuse"] = reuse or None
c["train_initial"]["budget"] = {"minutes": float(minutes)}
c["train_anneal"] = {"batch_size": 16, "micro_batch": 8, "valid_users": 0,
                     "budget": {"minutes": float(anneal)}}
ev = {"split": split, "limit": int(limit), "seed": int(seed), "beam": 20, "batch": 8}
c["eval"] = [dict(ev, model={"model": None, "adapter": a}) for a in ("on", "off")]
json.dump(c, sys.stdout, indent=2)
PY
mv "$cfg.tmp" "$cfg"
fi
base="$OUT/base"
for arm in "${ARMS[@]}"; do
  case "$arm" in
    base) flags=() ;;
    index-semantic) flags=(--ablation index=semantic --ablation anneal=off) ;;
    index-behavior) flags=(--ablation index=behavior --ablation anneal=off) ;;
    gct-off) flags=(--ablation gct=off --ablation anneal=off) ;;
    index-random) flags=(--ablation index=random --ablation anneal=off) ;;
    *) echo "cpu-ablations: unknown arm $arm (base, index-semantic, index-behavior, gct-off, index-random)" >&2; exit 2 ;;
  esac
  [ "$arm" = base ] || [ -d "$base" ] || { echo "cpu-ablations: run base first" >&2; exit 2; }
  echo "cpu-ablations: $arm" >&2
  "$BIN" pipeline --config "$cfg" --run "$base" "${flags[@]}" >"$OUT/$arm.log" 2>&1 \
    || { echo "cpu-ablations: $arm failed, see $OUT/$arm.log" >&2; exit 1; }
done
# The rankings: each arm's adapter-off evaluation (the initial model), and the base's adapter-on.
# Labels are split-model-adapter-sample: the adapter part is `off`, or the adapter's name when on.
preds() {
  local all
  all=$(ls "$1"/eval/"$SPLIT"-*-"$LIMIT"u-seed"$SEED".predictions.jsonl 2>/dev/null || true)
  if [ "$2" = off ]; then grep -- "-off-" <<<"$all" | head -1 || true
  else grep -v -- "-off-" <<<"$all" | head -1 || true; fi
}
pairs=()
for arm in base index-semantic index-behavior gct-off index-random; do
  # The pipeline names an ablation's run after the base and its switches.
  dir="$base"; [ "$arm" = base ] || dir="$base-$arm-anneal-off"
  f=$(preds "$dir" off)
  [ -n "$f" ] && pairs+=("$arm=$f")
done
[ ${#pairs[@]} -ge 2 ] && "$BIN" paired "${pairs[@]}" --json "$OUT/paired-initial.json" | tee "$OUT/paired-initial.md"
on=$(preds "$base" on)
off=$(preds "$base" off)
[ -n "$on" ] && [ -n "$off" ] && "$BIN" paired "adapter-off=$off" "adapter-on=$on" --json "$OUT/paired-anneal.json" | tee "$OUT/paired-anneal.md"
exit 0
