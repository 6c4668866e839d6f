"""Does mamba-ssm's scan backward wait on its atomics? Time its kernels with B and C handed over in G groups.

    python measurements/scan_groups.py [--json results.json]

The model's B and C are shared by all 512 channels, and mamba-ssm's backward runs one thread block per (sequence,
channel), so every block adds its share of dB and dC into the same fp32 addresses with atomics (2 x 512 x 4 x 65,536
a layer). Handed the same B and C as G groups (a stride-0 view; mamba-ssm's `ngroups`), each group of 512 / G
channels adds into its own copy, and dB, dC are the sum over the copies: the same numbers (in another order of
addition), with G times fewer blocks on each address. Shape as measurements/scan_configs.py (one layer, one H200's
share of the record's step); the kernels called directly, forward and backward timed apart.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from benchmark import median_ms  # noqa: E402
from scan_configs import BATCH, DIM, LENGTH, inputs  # noqa: E402

GROUPS = (1, 2, 4, 8, 16, 32, 64, 128)


def grouped_scan(x: dict, grad: torch.Tensor, groups: int):
    """Forward and backward of mamba-ssm's kernels with B and C viewed as `groups` groups; dB and dC summed back."""
    import selective_scan_cuda
    B, C = (t.unsqueeze(1).expand(-1, groups, -1, -1) for t in (x["B"], x["C"]))
    args = (x["u"], x["delta"], x["A"], B, C, x["D"], x["z"], x["delta_bias"])

    def forward():
        return selective_scan_cuda.fwd(*args, True)

    out, states, gated = forward()

    def backward():
        return selective_scan_cuda.bwd(*args, grad, states, out, None, True, False)

    du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = backward()
    return forward, backward, [gated, du, ddelta, dA, dB.sum(1), dC.sum(1), dD, ddelta_bias, dz]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    x = inputs()
    x["z"] = x["z"].contiguous()  # the backward wants z with stride 1 along positions, as train_gpt passes it
    grad = torch.randn(BATCH, DIM, LENGTH, device="cuda", dtype=torch.bfloat16)
    rows, first = [], None
    print("| groups | forward ms | backward ms | total ms | max rel. error against 1 group |")
    print("|---|---|---|---|---|")
    for groups in GROUPS:
        forward, backward, results = grouped_scan(x, grad, groups)
        fwd, bwd = median_ms(forward, 3, 20), median_ms(backward, 3, 20)
        first = first or results
        error = max(((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item() for a, b in zip(results, first))
        rows.append(dict(groups=groups, forward_ms=round(fwd, 3), backward_ms=round(bwd, 3), total_ms=round(fwd + bwd, 3),
                         error=error))
        print(f"| {groups} | {fwd:.3f} | {bwd:.3f} | {fwd + bwd:.3f} | {error:.2e} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
