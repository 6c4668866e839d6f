"""Time the causal convolution (with its SiLU) at one layer's shape: compiled from train_gpt.causal_conv1d's sum, and the
Triton probe's two designs (measurements/triton_conv.py) under several tile settings.

    python measurements/conv_configs.py [--json results.json]

Shape: one H200's share of the record's step, 2 sequences x 32,768 positions x 512 channels, bf16, x a channel slice
of a (channels, batch, length) buffer as the model passes it. Forward, and forward + backward, timed apart; every row's
output and gradients checked against the first's. Times per layer (the model runs 8): the GPU kernels' own time
(from the profiler, 10 runs), as in the training step, where the GPU never waits for these launches; and the
wall-clock of one call (CUDA events), which here also counts the CPU's launch overhead.
"""
import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import train_gpt as tg  # noqa: E402
import triton_conv  # noqa: E402
from kernel_table import TABLE_COLUMNS, time_candidate  # noqa: E402

BATCH, DIM, LENGTH, K = 2, 512, 32768, 4
SETTINGS = [dict(BD=bd, BL=bl, num_warps=w) for bd, bl, w in itertools.product((4, 8), (256, 512), (4, 8))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(2 * DIM, BATCH, LENGTH, device="cuda", dtype=torch.bfloat16).transpose(0, 1)[:, :DIM].requires_grad_()
    weight = (torch.randn(DIM, K, device="cuda") * 0.5).requires_grad_()
    bias = (torch.randn(DIM, device="cuda") * 0.1).requires_grad_()
    grad = torch.randn(DIM, BATCH, LENGTH, device="cuda", dtype=torch.bfloat16).transpose(0, 1)
    compiled = torch.compile(tg.causal_conv1d, dynamic=False)
    candidates = [("compiled sum", compiled, None)] + [
        (f"{design} {s}", functools.partial(triton_conv.causal_conv1d_triton, design=design), s)
        for design in triton_conv.BACKWARD_MODES for s in SETTINGS]
    rows, first = [], None
    print(f"| conv | {TABLE_COLUMNS}\n|---|---|---|---|---|---|")
    for name, conv, settings in candidates:
        if settings:
            triton_conv.CONV_BLOCK.update(settings)
        forward = lambda: conv(x, weight, bias)
        row, first = time_candidate(name, forward, lambda: torch.autograd.grad(forward(), [x, weight, bias], grad), first)
        rows += [dict(conv=name) | row] if row else []
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
