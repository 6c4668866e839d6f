"""Use to compare the selective scans alone: times each backend's forward and forward + backward at
one layer's shape on a GPU, and its error against the reference in fp32 at a shorter length.

    python3 tools/scan_timing.py                          # fused and mamba-ssm (where installed)
    python3 tools/scan_timing.py --fused-threads 256 64  # the fused scan with other block sizes

Inputs are laid out as the model passes them: u and delta (b, d, l) views of (d, b, l) storage, z a
slice of the xz projection, B and C slices of the x projection. Times are the median of CUDA-event
timings of the kernels' calls, after warm-up.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402
from benchmark import median_ms  # noqa: E402  (this folder is on the path)


def model_layout_inputs(batch: int, dim: int, state: int, length: int, device: str = "cuda"
                        ) -> dict:
    gen = torch.Generator(device).manual_seed(0)

    def channel_major(rows):
        x = torch.randn(rows, batch, length, device=device, generator=gen, dtype=torch.bfloat16)
        return x.transpose(0, 1)

    xz = channel_major(2 * dim)
    projected = channel_major(32 + 2 * state)
    delta = (channel_major(dim).float() * 0.5 - 2).bfloat16()
    return dict(u=xz[:, :dim], delta=delta, A=-torch.rand(dim, state, device=device) * 4 - 0.1,
                B=projected[:, 32:32 + state], C=projected[:, 32 + state:],
                D=torch.randn(dim, device=device), z=xz[:, dim:],
                delta_bias=torch.rand(dim, device=device) * -3)


def leaves(inputs: dict) -> dict:
    return {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}


def forward_backward(scan, inputs: dict):
    out = scan(**inputs)
    torch.autograd.grad(out, [v for v in inputs.values() if v.requires_grad], torch.ones_like(out))


def relative_errors(scan, inputs: dict) -> dict:
    """Output and gradients against the reference (fp32 inside) from the same bf16 inputs."""
    results = []
    for fn in (scan, tg.selective_scan_reference):
        args = leaves(inputs)
        out = fn(**args)
        weights = torch.linspace(-1, 1, out.numel(), device="cuda").view_as(out)
        grads = torch.autograd.grad((out.float() * weights).sum(), list(args.values()))
        results.append([out, *grads])
    names = ["out", *(f"d{k}" for k in inputs)]
    return {name: round(((a.float() - b.float()).norm() / b.float().norm()).item(), 5)
            for name, a, b in zip(names, *results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--error-length", type=int, default=4096)
    parser.add_argument("--fused-threads", nargs="*", type=int, default=[],
                        help="the fused scan's threads a block, beside the script's")
    args = parser.parse_args()
    timed = leaves(model_layout_inputs(args.batch, args.dim, 4, args.length))
    checked = model_layout_inputs(args.batch, args.dim, 4, args.error_length)
    backends = []
    for variant in [tg.SCAN_THREADS, *args.fused_threads]:
        backends.append((f"fused {variant}", tg.selective_scan_fused, variant))
    if tg._importable("mamba_ssm"):
        backends.append(("mamba_ssm", tg.selective_scan_mamba_ssm, None))
    print(f"shape: batch {args.batch}, channels {args.dim}, length {args.length}, state 4; "
          f"errors at length {args.error_length}; {torch.cuda.get_device_name()}")
    print("| scan | forward ms | forward + backward ms | relative errors against the reference |")
    print("|---|---|---|---|")
    for name, scan, variant in backends:
        if variant is not None:
            tg.SCAN_THREADS, tg.SCAN_CHUNK = variant, variant * 8
        with torch.no_grad():
            forward = median_ms(lambda: scan(**timed), warmup=3, iters=20)
        both = median_ms(lambda: forward_backward(scan, timed), warmup=3, iters=20)
        errors = relative_errors(scan, checked)
        print(f"| {name} | {forward:.3f} | {both:.3f} | {errors} |", flush=True)


if __name__ == "__main__":
    main()
