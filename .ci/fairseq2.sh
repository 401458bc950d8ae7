#!/usr/bin/env bash
# CI for the optional fairseq2 data-pipeline backend (mmd2v2/data/fairseq2_pipeline.py). fairseq2 0.8.1 pins
# torch==2.9.1, transformers~=4.57 and huggingface_hub<1.0, so it gets its own venv beside the main one
# (about 7 GB: the only torch 2.9.1 on this registry is the CUDA build). Its native library needs libsndfile1.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p | grep -q libsndfile.so.1; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo -n")
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libsndfile1 >/dev/null
fi
python3 -m venv .venv-fairseq2
.venv-fairseq2/bin/pip install --quiet fairseq2==0.8.1 pytest pillow
.venv-fairseq2/bin/python -m pytest -q tests/test_fairseq2_pipeline.py
