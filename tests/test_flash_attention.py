"""measurements/flash_attention.py, the FlashAttention-4 operators of the flash_attention variant, on CPU: the package's
two functions stood in for by the reference attention, so that what the operators pass (the window, the saved tensors,
the gradients) is checked without a GPU; tests/test_gpu.py checks the kernels themselves."""
import sys

import torch

import flash_attention  # measurements/, on the path through conftest.py
import train_gpt as tg


class StandInFlashInterface:
    """flash_attn.cute.interface's _flash_attn_fwd/_bwd calling conventions, computed with the reference attention."""

    @staticmethod
    def attention(q, k, v, causal, window_size_left, window_size_right):
        assert causal and window_size_right == 0
        return tg.sliding_window_attention_reference(q, k, v, window_size_left + 1)  # the left size excludes the query

    @staticmethod
    def _flash_attn_fwd(q, k, v, causal, window_size_left, window_size_right, return_lse):
        out = StandInFlashInterface.attention(q, k, v, causal, window_size_left, window_size_right).contiguous()
        lse = torch.randn(q.size(0), q.size(2), q.size(1), dtype=torch.float32)  # (b, heads, t), as the kernel's
        StandInFlashInterface.saved = (out.detach().clone(), lse.clone())
        return out, lse, None, None, None

    @staticmethod
    def _flash_attn_bwd(q, k, v, out, dout, lse, causal, window_size_left, window_size_right):
        assert torch.equal(out, StandInFlashInterface.saved[0]) and torch.equal(lse, StandInFlashInterface.saved[1])
        _, vjp = torch.func.vjp(lambda *qkv: StandInFlashInterface.attention(*qkv, causal, window_size_left, window_size_right),
                                q, k, v)
        return vjp(dout)


def test_flash_attention_operator_wiring(monkeypatch):
    """The custom operators around FlashAttention-4 pass the window, saved tensors and gradients in the right order."""
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", StandInFlashInterface)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 50, heads, 8, dtype=torch.float64, requires_grad=True) for heads in (4, 2, 2))
    grad = torch.randn(2, 50, 4, 8, dtype=torch.float64)
    out_op = flash_attention.sliding_window_attention_flash(q, k, v, 16)
    out_ref = tg.sliding_window_attention_reference(q, k, v, 16)
    torch.testing.assert_close(out_op, out_ref)
    for name, g_op, g_ref in zip("qkv", torch.autograd.grad(out_op, (q, k, v), grad), torch.autograd.grad(out_ref, (q, k, v), grad)):
        torch.testing.assert_close(g_op, g_ref, msg=f"gradient of {name}")
    torch.library.opcheck(flash_attention.flash_attention_forward, (q, k, v, 16), test_utils=("test_schema", "test_faketensor"))
