"""A candidate: train_gpt.py with the Mamba branch's input and gate (xm, z) from two matmuls instead of one split.

    python3 measurements/variants/split_xz.py train_gpt.py > /tmp/variants/split_xz/train_gpt.py

From one matmul, xm and z are slices of one output, so the backward first gathers their gradients into one tensor (a
copy of 2 x 64 MiB a layer: the profile's `cat_clone_transpose` kernel, about 0.06 ms a layer). From two, each
gradient goes to its own matmul. The same model (tests/test_variants.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from variant_edit import write_variant  # noqa: E402

OLD = "        xm, z = channel_major_linear(xz_weight, x.mT).split(self.inner, dim=1)\n"
NEW = "        xm, z = (channel_major_linear(w, x.mT) for w in xz_weight.split(self.inner))\n"

write_variant("split_xz", [(OLD, NEW)])
