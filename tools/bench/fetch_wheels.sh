#!/usr/bin/env bash
# Downloads the wheels tools/bench/diffusers_gpu.sh installs on the GPU machine (which has
# no network) into .whl/ (repo root, git-ignored): diffusers 0.42.1 and those of its hard
# requirements that the GPU image lacks. The image already has torch, transformers,
# safetensors, huggingface_hub, numpy, pillow, regex, requests, filelock and httpx.
#
#   tools/bench/fetch_wheels.sh            # then carry .whl/ to the GPU machine
#
# diffusers 0.42.1 needs huggingface_hub>=1.32; the image's transformers pins <2.0 but may
# ship an older 1.x, so a 1.x wheel that satisfies both is kept apart in .whl/hub/ and is
# only installed where the image's copy is too old (see diffusers_gpu.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP_DL=(python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all:
    --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform any)
mkdir -p .whl/hub
# diffusers' unconditional Requires-Dist: importlib_metadata, filelock, huggingface-hub,
# numpy, regex, requests, safetensors, Pillow. importlib_metadata (and its own zipp and
# lazy-importer) is only imported by diffusers on Python < 3.8 but is fetched so the
# declared requirements are all present.
for spec in diffusers==0.42.1 importlib_metadata==10.2.0 zipp==4.1.2 lazy-importer==0.1.0; do
    "${PIP_DL[@]}" -d .whl "$spec"
done
"${PIP_DL[@]}" -d .whl/hub huggingface_hub==1.33.0
ls -l .whl .whl/hub
du -sh .whl
