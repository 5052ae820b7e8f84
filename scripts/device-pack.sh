#!/usr/bin/env bash
# Fills the ignored folder dev-carry/ with what the GPU machine needs, in two parts that each
# keep a `run` call's working tree under its 64 MiB (this tree's tracked files included):
#   p1 = the gzipped CUDA binary (scripts/build-cuda.sh) + the GGUF's first bytes, up to 62 MiB;
#   p2 = the rest of the GGUF + Beauty (inter, item) + the seed run's index and gzipped Z^b
#        (RUN, default runs/beauty: `llmbs pipeline --config beauty --to index` on the CPU).
# Z^s (26 MB gzipped) does not travel: scripts/gpu-quality-run.sh embeds it on the GPU in seconds.
# With LETTER=1, p2 also carries Beauty.letter-index.json (STAGE=full of scripts/device-check.sh).
# Prints the carry lists.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=$(scripts/fetch-model.sh)
RUN="${RUN:-runs/beauty}"
LIMIT=$(( 62 * 1024 * 1024 ))
BIN_GZ=target-cuda/llmbs-cuda.gz
[ -f "$BIN_GZ" ] || { echo "$BIN_GZ missing: run scripts/build-cuda.sh first" >&2; exit 1; }
for f in "$RUN"/index/*.index.json "$RUN/embeddings/behavior.safetensors"; do
  [ -f "$f" ] || { echo "$f missing: run llmbs pipeline --config beauty --to index first" >&2; exit 1; }
done

rm -rf dev-carry && mkdir -p dev-carry/p1 dev-carry/p2/beauty dev-carry/p2/seed/index dev-carry/p2/seed/embeddings
cp "$BIN_GZ" dev-carry/p1/llmbs-cuda.gz
cp target-cuda/llmbs-cuda.commit dev-carry/p1/ 2>/dev/null || true
src_commit="$(git log -1 --format=%h -- src build.rs Cargo.toml Cargo.lock)"
if [ "$(cut -d' ' -f1 target-cuda/llmbs-cuda.commit 2>/dev/null)" != "$src_commit" ]; then
  echo "warning: $BIN_GZ was not built from the current source ($src_commit; it says $(cat target-cuda/llmbs-cuda.commit 2>/dev/null || echo unknown)): rerun scripts/build-cuda.sh" >&2
fi
first=$(( LIMIT - $(stat -c %s "$BIN_GZ") - 65536 ))
head -c "$first" "$GGUF" > dev-carry/p1/model.gguf.part1
tail -c +"$(( first + 1 ))" "$GGUF" > dev-carry/p2/model.gguf.part2
sha256sum "$GGUF" | cut -d' ' -f1 > dev-carry/p2/model.sha256
cp ../shared/data/beauty/Beauty.inter.json ../shared/data/beauty/Beauty.item.json dev-carry/p2/beauty/
if [ "${LETTER:-0}" = 1 ]; then
  cp ../shared/data/beauty/Beauty.letter-index.json dev-carry/p2/beauty/
fi
cp "$RUN"/index/*.index.json dev-carry/p2/seed/index/
gzip -c "$RUN/embeddings/behavior.safetensors" > dev-carry/p2/seed/embeddings/behavior.safetensors.gz

for p in p1 p2; do
  size=$(du -sb "dev-carry/$p" | cut -f1)
  echo "dev-carry/$p: $size bytes ($(( size / 1024 / 1024 )) MiB)"
  if [ "$size" -gt "$LIMIT" ]; then
    echo "dev-carry/$p is over $LIMIT bytes: the call's working tree would pass 64 MiB" >&2
    exit 1
  fi
done
echo "call 1 carry: [\"dev-carry/p1\"] (STAGE=smoke)   call 2 carry: [\"dev-carry/p2\"] (STAGE=train)"
