"""The Triton scan probe (measurements/triton_scan.py) against the reference scan, on CPU through Triton's interpreter.
Skipped where Triton is not installed (CI installs only what the script needs; the probe is not part of a run)."""
import pytest
import torch

import train_gpt as tg

pytest.importorskip("triton")  # on CPU in its interpreter (conftest.py)
from triton_scan import selective_scan_triton  # noqa: E402


def test_triton_scan_matches_the_reference_with_its_gradients():
    """Sliced z, B and C as the model passes them, a channel count the block does not divide, a last chunk cut short."""
    torch.manual_seed(0)
    b, d, length, n = 2, 24, 300, 4
    z = torch.randn(b, 2 * d, length)[:, d:]
    bc = torch.randn(b, 2 * n + 3, length)
    inputs = dict(u=torch.randn(b, d, length), delta=torch.randn(b, d, length), A=-torch.rand(d, n) * 3, B=bc[:, 3:3 + n],
                  C=bc[:, 3 + n:], D=torch.randn(d), z=z, delta_bias=torch.randn(d))
    grad = torch.randn(b, d, length)
    results = []
    for scan, dtype in ((tg.selective_scan_reference, torch.float64), (selective_scan_triton, torch.float32)):
        leaves = {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}
        out = scan(**leaves, **({"block_d": 16, "chunk": 32} if scan is selective_scan_triton else {}))
        results.append([out, *torch.autograd.grad(out, list(leaves.values()), grad.to(dtype))])
    for name, ref, got in zip(["output", *inputs], *results):
        err = (got.double() - ref).norm() / ref.norm()
        assert err < 1e-5, f"{name}: relative error {err:.3g}"
