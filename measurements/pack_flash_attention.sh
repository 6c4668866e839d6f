#!/usr/bin/env bash
# FlashAttention-4 for the H200 device machine, which has no network: the wheels that the eighth session measured,
# fetched here (Python 3.12, x86-64 Linux), unpacked and packed into one archive small enough to carry (64 MiB a call).
#   bash measurements/pack_flash_attention.sh          # writes .fa/flash_attention_site.tar.xz (about 55 MB, 2-3 min)
# On the device, before the session driver (carry [".gpu", ".fa"]):
#   mkdir -p /tmp/site && tar xJf .fa/flash_attention_site.tar.xz -C /tmp/site
#   export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages   # what the package's .pth file would add
# Pinned: newer nvidia-cutlass-dsl wheels (4.5 on) split into parts, and this machine's index served no part with the
# DSL's Python code (no cutlass.cute); 4.4.2's one wheel has it, and flash-attn-4 4.0.0b15 and quack-kernels 0.4.1
# accept it. The archive is too big to carry beside .gpu/devtext_sp1024 (36 MB): a run that needs both unpacks this
# in one call and trains in the next, on the machine kept warm.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.fa/" .git/info/exclude || echo "/.fa/" >> .git/info/exclude
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
