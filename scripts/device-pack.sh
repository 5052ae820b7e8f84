#!/usr/bin/env bash
# Fills the ignored folder dev-carry/ with what scripts/device-check.sh needs on the GPU machine,
# split so each `run` call carries under 64 MiB: part 1 = binary (~21 MB gzipped) + the GGUF's
# first 42 MB, part 2 = the rest of the GGUF + Beauty + LETTER's index. Prints the carry lists.
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
du -sh dev-carry/p1 dev-carry/p2
echo "call 1 carry: [\"dev-carry/p1\"]   call 2 carry: [\"dev-carry/p2\"]"
