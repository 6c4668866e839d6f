"""A probe, not a candidate: train_gpt.py without QAT's fake quantization in the forward, benchmarked beside it.

    python3 measurements/variants/no_qat_forward.py train_gpt.py > /tmp/variants/no_qat_forward/train_gpt.py

train_gpt.py computes every large weight's int8 grid in every forward, also while QAT is off, so that switching
QAT on changes a tensor, not the graph (no recompile inside the training clock). The difference between the two
steps is what that costs. While QAT is off both compute the same model (tests/test_variants.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from variant_edit import write_variant  # noqa: E402

OLD = '''    if not is_quantized(w):
        return w
    on_grid ='''
NEW = '''    if True:  # the probe: never on the grid
        return w
    on_grid ='''

write_variant("no_qat_forward", [(OLD, NEW)])
