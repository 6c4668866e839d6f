"""Time the Triton selective scan (measurements/triton_scan.py) at the model's shape under several launch settings,
and mamba-ssm's kernel as train_gpt.py calls it.

    python measurements/scan_configs.py [--json results.json]

The shape is one H200's share of the record's step and one layer's scan: 2 sequences of 32,768 positions, 512
channels, state 4, bf16 (A, D and the step-size bias fp32), z, B and C slices of wider tensors as the model passes
them. Settings: block_d channels and `chunk` positions per program, `warps` per program. Each row is checked against
the first (triton_scan's defaults); mamba-ssm's kernel (if installed) is timed through its own autograd wrapper. Times are per layer (the model runs 8), medians of CUDA-event timings after warm-up.
"""
import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from benchmark import median_ms  # noqa: E402
from triton_scan import selective_scan_triton  # noqa: E402

BATCH, DIM, LENGTH, STATE = 2, 512, 32768, 4
SETTINGS = [dict(block_d=8, chunk=64, warps=4)] + [dict(block_d=bd, chunk=c, warps=w) for bd, c, w in itertools.product(
    (4, 8, 16), (32, 64, 128), (4, 8)) if (bd, c, w) != (8, 64, 4)]


def inputs():
    torch.manual_seed(0)
    dev, bf16 = "cuda", torch.bfloat16
    xz = torch.randn(BATCH, 2 * DIM, LENGTH, device=dev, dtype=bf16)
    bc = torch.randn(BATCH, 40, LENGTH, device=dev, dtype=bf16)  # dt_rank 32, then B and C, as x_proj's output
    return dict(u=xz[:, :DIM].contiguous(), delta=(torch.randn(BATCH, DIM, LENGTH, device=dev) * 0.5 - 2).to(bf16),
                A=-torch.arange(1, STATE + 1, device=dev, dtype=torch.float32).repeat(DIM, 1), B=bc[:, 32:36], C=bc[:, 36:],
                D=torch.ones(DIM, device=dev), z=xz[:, DIM:], delta_bias=torch.rand(DIM, device=dev) * -3)


def mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias):
    """mamba-ssm's kernel with the arguments train_gpt.py gives it (forward, and the backward through autograd)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    return selective_scan_fn(u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, z, delta_bias, delta_softplus=True)


def time_scan(scan, leaves: dict, grad: torch.Tensor) -> tuple[float, float, torch.Tensor, tuple]:
    differentiable = [v for v in leaves.values() if v.requires_grad]
    forward = lambda: scan(**leaves)
    both = lambda: torch.autograd.grad(forward(), differentiable, grad)
    out, grads = forward(), both()
    fwd, total = median_ms(forward, 3, 20), median_ms(both, 3, 20)
    return fwd, total - fwd, out, grads


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs().items()}
    grad = torch.randn(BATCH, DIM, LENGTH, device="cuda", dtype=torch.bfloat16)
    rows, first = [], None
    candidates = [(s, lambda s=s, **kw: selective_scan_triton(**kw, **s)) for s in SETTINGS]
    try:
        import mamba_ssm  # noqa: F401
        candidates.append(({"mamba_ssm": True}, mamba_ssm_scan))
    except ImportError:
        pass
    print("| settings | forward ms | backward ms | total ms | max rel. error against the first row |")
    print("|---|---|---|---|---|")
    for settings, scan in candidates:
        try:
            fwd, bwd, out, grads = time_scan(scan, leaves, grad)
        except Exception as e:  # e.g. out of registers or shared memory: reported, not fatal
            print(f"| {settings} | failed: {type(e).__name__}: {str(e)[:100]} | | | |")
            continue
        results = [out, *grads]
        first = first or results
        error = max(((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item() for a, b in zip(results, first))
        rows.append(dict(settings=settings, forward_ms=round(fwd, 3), backward_ms=round(bwd, 3), total_ms=round(fwd + bwd, 3),
                         error=error))
        print(f"| {settings} | {fwd:.3f} | {bwd:.3f} | {fwd + bwd:.3f} | {error:.2e} |", flush=True)
    triton_rows = [r for r in rows if "mamba_ssm" not in r["settings"]]
    if triton_rows:
        best = min(triton_rows, key=lambda r: r["total_ms"])
        print(f"fastest Triton settings: {best['settings']}, {best['total_ms']:.3f} ms per layer")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
