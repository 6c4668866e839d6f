"""Time the token-major sequential Triton scan (measurements/seq_scan.py) at the model's shape under several launch
settings, against mamba-ssm's kernel on the same values laid out channel-major, as train_gpt.py passes them.

    python measurements/seq_scan_configs.py [--json results.json]

The shape is one H200's share of the record's step and one layer's scan: 2 sequences of 32,768 positions, 512
channels, state 4, bf16 (A, D and the step-size bias fp32), z, B and C slices of wider tensors as the model passes
them. Settings: `block` channels and `chunk` positions per program, `warps` per program, the backward's `subtile`.
Every row is checked against mamba-ssm's (if installed; else the first row). Times are per layer (the model runs 8),
medians of CUDA-event timings after warm-up.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from scan_configs import time_scan  # noqa: E402
from seq_scan import selective_scan_tokens  # noqa: E402

BATCH, DIM, LENGTH, STATE = 2, 512, 32768, 4
SETTINGS = [dict(block=32, warps=1, chunk=256, subtile=8), dict(block=32, warps=1, chunk=128, subtile=8),
            dict(block=32, warps=1, chunk=512, subtile=8), dict(block=32, warps=1, chunk=256, subtile=4),
            dict(block=64, warps=2, chunk=256, subtile=8), dict(block=128, warps=4, chunk=256, subtile=8),
            dict(block=64, warps=1, chunk=256, subtile=4), dict(block=128, warps=4, chunk=128, subtile=4)]


def inputs():
    """Token-major, as the model would pass them: u and z halves of one projection, B and C slices of x_proj's output."""
    torch.manual_seed(0)
    dev, bf16 = "cuda", torch.bfloat16
    xz = torch.randn(BATCH, LENGTH, 2 * DIM, device=dev, dtype=bf16)
    bc = torch.randn(BATCH, LENGTH, 40, device=dev, dtype=bf16)  # dt_rank 32, then B and C
    return dict(u=xz[..., :DIM].contiguous(), delta=(torch.randn(BATCH, LENGTH, DIM, device=dev) * 0.5 - 2).to(bf16),
                A=-torch.arange(1, STATE + 1, device=dev, dtype=torch.float32).repeat(DIM, 1), B=bc[..., 32:36],
                C=bc[..., 36:], D=torch.ones(DIM, device=dev), z=xz[..., DIM:], delta_bias=torch.rand(DIM, device=dev) * -3)


def channel_major(leaves: dict) -> dict:
    """The same values as mamba-ssm reads them (b, d, l), laid out as train_gpt.py's channel-major branch makes them."""
    return {k: v.detach().transpose(1, 2).contiguous().requires_grad_() if k in ("u", "delta", "z", "B", "C") else v
            for k, v in leaves.items()}


def mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    return selective_scan_fn(u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, z, delta_bias, delta_softplus=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--settings", help="a JSON list of settings to time instead of SETTINGS")
    parser.add_argument("--profile", action="store_true", help="then each kernel's time for the fastest settings")
    args = parser.parse_args()
    leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs().items()}
    grad = torch.randn(BATCH, LENGTH, DIM, device="cuda", dtype=torch.bfloat16)
    rows, reference = [], None
    try:  # mamba-ssm first: every row is compared with it, back in token-major layout
        import mamba_ssm  # noqa: F401
        cm = channel_major(leaves)
        fwd, bwd, out, grads = time_scan(mamba_ssm_scan, cm, grad.transpose(1, 2).contiguous())
        reference = [r.transpose(-1, -2) if r.dim() == 3 else r for r in (out, *grads)]
        rows.append(dict(settings={"mamba_ssm": True}, forward_ms=round(fwd, 3), backward_ms=round(bwd, 3),
                         total_ms=round(fwd + bwd, 3), error=0.0))
    except ImportError:
        pass
    print("| settings | forward ms | backward ms | total ms | max rel. error against the reference row |")
    print("|---|---|---|---|---|")
    if rows:
        print(f"| mamba-ssm (channel-major) | {rows[0]['forward_ms']:.3f} | {rows[0]['backward_ms']:.3f} | {rows[0]['total_ms']:.3f} | reference |", flush=True)
    for settings in json.loads(args.settings) if args.settings else SETTINGS:
        try:
            fwd, bwd, out, grads = time_scan(lambda s=settings, **kw: selective_scan_tokens(**kw, **s), leaves, grad)
            results = [out, *grads]
        except Exception as e:  # e.g. out of registers or shared memory: reported, not fatal
            print(f"| {settings} | failed: {type(e).__name__}: {str(e)[:100]} | | | |", flush=True)
            continue
        reference = reference or results
        errors = [((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item() for a, b in zip(results, reference)]
        rows.append(dict(settings=settings, forward_ms=round(fwd, 3), backward_ms=round(bwd, 3), total_ms=round(fwd + bwd, 3),
                         error=max(errors), errors=[round(e, 6) for e in errors]))
        print(f"| {settings} | {fwd:.3f} | {bwd:.3f} | {fwd + bwd:.3f} | {max(errors):.2e} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.profile:
        best = min((r for r in rows if "mamba_ssm" not in r["settings"]), key=lambda r: r["total_ms"])["settings"]
        differentiable = [v for v in leaves.values() if v.requires_grad]
        step = lambda: torch.autograd.grad(selective_scan_tokens(**leaves, **best), differentiable, grad)
        step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        print(f"kernels of {best}, 5 forward + backward:")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
