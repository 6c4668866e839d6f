"""The Triton causal convolution probe (measurements/triton_conv.py) against train_gpt's compiled one's eager sum, on CPU
through Triton's interpreter (conftest.py). Skipped where Triton is not installed (CI installs only what the script
needs; the probe is not part of a run)."""
import pytest
import torch

import train_gpt as tg

pytest.importorskip("triton")  # on CPU in its interpreter (conftest.py)
from triton_conv import causal_conv1d_triton  # noqa: E402


@pytest.mark.parametrize("design", ["recompute", "two_pass"])
def test_triton_conv_matches_the_sum_with_its_gradients(design):
    """x as the model passes it (a channel slice of a (channels, batch, length) buffer), a channel count the block does
    not divide, a length the block does not divide, a gradient in another layout."""
    torch.manual_seed(0)
    b, d, length, k = 2, 11, 700, 4
    x = torch.randn(2 * d, b, length).transpose(0, 1)[:, :d]
    inputs = dict(x=x, weight=torch.randn(d, k), bias=torch.randn(d))
    grad = torch.randn(b, length, d).transpose(1, 2)
    results = []
    for conv, dtype in ((tg.causal_conv1d, torch.float64), (causal_conv1d_triton, torch.float32)):
        leaves = {name: v.to(dtype).requires_grad_() for name, v in inputs.items()}
        out = conv(**leaves, **({"design": design} if conv is causal_conv1d_triton else {}))
        results.append([out, *torch.autograd.grad(out, list(leaves.values()), grad.to(dtype))])
    assert results[1][0].stride() == (length, b * length, 1)  # laid out (channels, batch, length), as x
    for name, ref, got in zip(["output", *inputs], *results):
        err = (got.double() - ref).norm() / ref.norm()
        assert err < 1e-5, f"{name}: relative error {err:.3g}"
    contiguous = causal_conv1d_triton(x.contiguous(), inputs["weight"], inputs["bias"], design)  # copied to that layout
    torch.testing.assert_close(contiguous, results[1][0], rtol=0, atol=0)
