#!/usr/bin/env bash
# Fills the ignored folder dev-carry/ with what scripts/device-check.sh needs on the GPU machine,
# split so each `run` call carries under 64 MiB: part 1 = binary (~21 MB gzipped) + the GGUF's
# first 42 MB, part 2 = the rest of the GGUF + Beauty + LETTER's index, part 3 (when RUN, default
# runs/beauty, holds index/ and embeddings/) = that run's index and gzipped Z^s/Z^b for
# STAGE=train. Prints the carry lists.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=$(scripts/fetch-model.sh)
rm -rf dev-carry && mkdir -p dev-carry/p1 dev-carry/p2/beauty
cp target-cuda/llmbs-cuda.gz dev-carry/p1/llmbs-cuda.gz
first=42000000
head -c "$first" "$GGUF" > dev-carry/p1/model.gguf.part1
tail -c +"$(( first + 1 ))" "$GGUF" > dev-carry/p2/model.gguf.part2
cp ../shared/data/beauty/Beauty.inter.json ../shared/data/beauty/Beauty.item.json \
   ../shared/data/beauty/Beauty.letter-index.json dev-carry/p2/beauty/
RUN="${RUN:-runs/beauty}"
if [ -d "$RUN/index" ] && [ -d "$RUN/embeddings" ]; then
  mkdir -p dev-carry/p3/index dev-carry/p3/embeddings
  cp "$RUN"/index/*.index.json dev-carry/p3/index/
  for f in semantic behavior; do
    gzip -c "$RUN/embeddings/$f.safetensors" > "dev-carry/p3/embeddings/$f.safetensors.gz"
  done
fi
du -sh dev-carry/p*
echo "call 1 carry: [\"dev-carry/p1\"]   call 2 carry: [\"dev-carry/p2\"]   call 3 (STAGE=train): [\"dev-carry/p3\"]"
