"""A candidate: train_gpt.py with mamba-ssm's scan given B and C as SCAN_GROUPS groups (default 8), benchmarked beside it.

    python3 measurements/variants/scan_groups.py train_gpt.py > /tmp/variants/scan_groups/train_gpt.py
    SCAN_GROUPS=16 python3 /tmp/variants/scan_groups/benchmark.py --train-only

B and C are shared by all channels; mamba-ssm's backward adds every channel's share of dB and dC into the same fp32
addresses with atomics. As G groups (a stride-0 view) each group of channels adds into its own copy, summed after:
the same gradients in another order of addition (measurements/scan_groups.py times the kernels alone).
"""
import sys
from pathlib import Path

EDITS = [  # (old, new): each must occur exactly once
    ("out, states, gated = selective_scan_cuda.fwd(u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, z, delta_bias, True)",
     "out, states, gated = selective_scan_cuda.fwd(u, delta, A, *scan_groups(B, C), D, z, delta_bias, True)"),
    ("        u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, z, delta_bias, grad, states, out, None, True, False)\n"
     "    return [du, ddelta, dA, dB.squeeze(1), dC.squeeze(1), dD, dz, ddelta_bias]",
     "        u, delta, A, *scan_groups(B, C), D, z, delta_bias, grad, states, out, None, True, False)\n"
     "    dB, dC = (g.sum(1, dtype=torch.float32).to(g.dtype) for g in (dB, dC))\n"
     "    return [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]"),
    ("@torch.library.custom_op(\"hymba::mamba_scan_forward\"",
     "def scan_groups(B, C):\n"
     "    groups = int(os.environ.get(\"SCAN_GROUPS\", \"8\"))\n"
     "    return (t.unsqueeze(1).expand(-1, groups, -1, -1) for t in (B, C))\n\n\n"
     "@torch.library.custom_op(\"hymba::mamba_scan_forward\""),
]

source = Path(sys.argv[1]).read_text(encoding="utf-8")
for old, new in EDITS:
    if source.count(old) != 1:
        sys.exit(f"scan_groups: train_gpt.py no longer has the code this candidate changes: {old[:60]!r}")
    source = source.replace(old, new)
sys.stdout.write(source)
