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
from benchmark import gpu_kernels, median_ms  # noqa: E402

BATCH, DIM, LENGTH, K = 2, 512, 32768, 4
SETTINGS = [dict(BD=bd, BL=bl, num_warps=w) for bd, bl, w in itertools.product((4, 8), (256, 512), (4, 8))]


def kernel_ms(fn, runs: int = 10) -> float:
    """The GPU kernels' own time per call (their sum, gaps between them not counted)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in gpu_kernels(prof)) / 1000 / runs


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
    print("| conv | forward, kernels ms | forward + backward, kernels ms | forward, one call ms | forward + backward, one call ms "
          "| max rel. error against the first row |")
    print("|---|---|---|---|---|---|")
    for name, conv, settings in candidates:
        if settings:
            triton_conv.CONV_BLOCK.update(settings)
        forward = lambda: conv(x, weight, bias)
        both = lambda: torch.autograd.grad(forward(), [x, weight, bias], grad)
        try:
            results = [forward(), *both()]
            fwd, total = median_ms(forward, 3, 20), median_ms(both, 3, 20)
            gpu_fwd, gpu_total = kernel_ms(forward), kernel_ms(both)
        except Exception as e:  # e.g. out of registers or shared memory: reported, not fatal
            print(f"| {name} | failed: {type(e).__name__}: {str(e)[:100]} | | | | |")
            continue
        first = first or results
        error = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(results, first))
        rows.append(dict(conv=name, forward_kernels_ms=round(gpu_fwd, 4), total_kernels_ms=round(gpu_total, 4),
                         forward_ms=round(fwd, 4), total_ms=round(total, 4), error=error))
        print(f"| {name} | {gpu_fwd:.4f} | {gpu_total:.4f} | {fwd:.4f} | {total:.4f} | {error:.2e} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
