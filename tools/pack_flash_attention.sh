#!/usr/bin/env bash
# Use to install FlashAttention-4 on a GPU machine without network: packs the pinned wheels into one archive.
# Run on a machine with network (fetches for Python 3.12, x86-64 Linux; about 55 MB, 2-3 min):
#   bash tools/pack_flash_attention.sh          # writes .fa/flash_attention_site.tar.xz
# Then, on the GPU machine, before training or benchmarking:
#   mkdir -p /tmp/site && tar xJf .fa/flash_attention_site.tar.xz -C /tmp/site
#   export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages   # what the package's .pth file would add
# Pinned (the versions measured in docs/performance.md): newer nvidia-cutlass-dsl wheels (4.5 on) split into parts, and
# the index used then served no part with the DSL's Python code (no cutlass.cute); 4.4.2's one wheel has it, and
# flash-attn-4 4.0.0b15 and quack-kernels 0.4.1 accept it.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)  # .fa/ stays out of git (in a worktree too)
mkdir -p "$(dirname "$exclude")" && touch "$exclude"
grep -qx "/.fa/" "$exclude" || echo "/.fa/" >> "$exclude"
work=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 -d "$work/wheels" \
  flash-attn-4==4.0.0b15 nvidia-cutlass-dsl==4.4.2 nvidia-cutlass-dsl-libs-base==4.4.2 quack-kernels==0.4.1 \
  apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 einops==0.9.0.dev0
mkdir -p "$work/site" .fa
for wheel in "$work"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$work/site"; done
tar cf - -C "$work/site" . | xz -9 -T0 > .fa/flash_attention_site.tar.xz
rm -rf "$work"
ls -l .fa/flash_attention_site.tar.xz
