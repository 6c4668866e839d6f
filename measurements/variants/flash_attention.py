"""A candidate: train_gpt.py with ATTN_BACKEND=flash, FlashAttention-4's kernels (measurements/flash_attention.py),
which 'auto' takes first where the flash-attn-4 package imports and the GPU is Hopper or newer.

    python3 measurements/variants/flash_attention.py train_gpt.py > /tmp/variants/flash_attention/train_gpt.py

The probe's code is written into the script before the kernel table. On CPU 'auto' never takes it, so
tests/test_variants.py checks only that the variant still applies; tests/test_flash_attention.py checks the operators.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from variant_edit import probe_code, write_variant  # noqa: E402

TABLE = "KERNEL_CHOICES = {\n"
EDITS = [
    (TABLE, probe_code("flash_attention.py") + "\n\n\n" + TABLE),
    ('    "attn": [("flex", "torch.nn.attention.flex_attention", sliding_window_attention_flex),\n',
     '    "attn": [("flash", "flash_attn.cute", sliding_window_attention_flash),\n'
     '             ("flex", "torch.nn.attention.flex_attention", sliding_window_attention_flex),\n'),
    ('(lambda v, hp: v in ("auto", "flex", "reference"), "auto, flex or reference"))',
     '(lambda v, hp: v in ("auto", "flash", "flex", "reference"), "auto, flash, flex or reference"))'),
    ('            if requested == "auto" and name != "reference" and device.type != "cuda":\n                continue\n',
     '            if requested == "auto" and name != "reference" and device.type != "cuda":\n                continue\n'
     '            if requested == "auto" and name == "flash" and torch.cuda.get_device_capability(device)[0] < 9:\n'
     '                continue  # FlashAttention-4\'s backward needs Hopper or newer\n'),
]

if __name__ == "__main__":
    write_variant("flash_attention", EDITS)
