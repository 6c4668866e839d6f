"""The token-major sequential Triton scan probe (measurements/seq_scan.py) against the reference scan: on a GPU where
there is one, else on CPU through Triton's interpreter. Skipped where Triton is not installed."""
import pytest
import torch

import train_gpt as tg

pytest.importorskip("triton")  # on CPU in its interpreter (conftest.py)
from seq_scan import selective_scan_tokens  # noqa: E402


def test_sequential_scan_matches_the_reference_with_its_gradients():
    """Sliced z, B and C as the model passes them, a channel count the block does not divide, a last chunk cut short."""
    torch.manual_seed(0)
    b, d, length, n = 2, 24, 100, 4
    z = torch.randn(b, length, 2 * d)[..., d:]
    bc = torch.randn(b, length, 2 * n + 3)
    inputs = dict(u=torch.randn(b, length, d), delta=torch.randn(b, length, d), A=-torch.rand(d, n) * 3,
                  B=bc[..., 3:3 + n], C=bc[..., 3 + n:], D=torch.randn(d), z=z, delta_bias=torch.randn(d))
    grad = torch.randn(b, length, d)
    channel_major = ("u", "delta", "B", "C", "z")
    results, device = [], "cuda" if torch.cuda.is_available() else "cpu"
    for scan, dtype in ((tg.selective_scan_reference, torch.float64), (selective_scan_tokens, torch.float32)):
        on = "cpu" if scan is tg.selective_scan_reference else device
        leaves = {k: v.to(on, dtype).requires_grad_() for k, v in inputs.items()}
        if scan is tg.selective_scan_reference:
            out = scan(**{k: v.mT if k in channel_major else v for k, v in leaves.items()}).mT
        else:
            out = scan(**leaves, block=16, chunk=32, subtile=8)
        results.append([t.cpu() for t in (out, *torch.autograd.grad(out, list(leaves.values()), grad.to(on, dtype)))])
    for name, ref, got in zip(["output", *inputs], *results):
        err = (got.double() - ref).norm() / ref.norm()
        assert err < 1e-5, f"{name}: relative error {err:.3g}"
