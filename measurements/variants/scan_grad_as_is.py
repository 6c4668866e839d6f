"""A candidate: train_gpt.py passing the scan's output gradient to mamba-ssm's backward as it comes, not copied.

    python3 measurements/variants/scan_grad_as_is.py train_gpt.py > /tmp/variants/scan_grad_as_is/train_gpt.py

mamba-ssm's backward reads the gradient through its batch and channel strides and needs only positions contiguous
(stride 1 along l), as for its inputs; `.contiguous()` copies it (64 MiB a layer) whenever its layout is another, such
as the (channels, batch, length) of the out-projection's backward. The same model (tests/test_variants.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from variant_edit import write_variant  # noqa: E402

OLD = "    return tuple(mamba_scan_backward(*inputs, grad.contiguous(), out, states))\n"
NEW = "    return tuple(mamba_scan_backward(*inputs, grad if grad.stride(-1) == 1 else grad.contiguous(), out, states))\n"

EDITS = [(OLD, NEW)]

if __name__ == "__main__":
    write_variant("scan_grad_as_is", EDITS)
