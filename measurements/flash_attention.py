"""Sliding-window attention through FlashAttention-4 (Dao-AILab's CuTe DSL kernels, `pip install flash-attn-4`; its
backward needs Hopper or newer), as train_gpt.py would call it: measurements/variants/flash_attention.py writes this
file's code into the script as ATTN_BACKEND=flash. Timed by measurements/attention_timing.py; checked on CPU against a
stand-in for the package (tests/test_flash_attention.py) and on a GPU against the reference (tests/test_gpu.py).
"""
import torch


# Its autograd wrapper is opaque to torch.compile, so, as mamba-ssm's scan in train_gpt.py, the forward and backward are
# custom operators: one opaque node each inside the compiled graph. The layout is the model's own, (b, t, heads, hd).
@torch.library.custom_op("hymba::flash_attention_forward", mutates_args=())
def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the output and the rows' log-sum-exp (b, heads, t), which the backward needs."""
    from flash_attn.cute.interface import _flash_attn_fwd
    out, lse = _flash_attn_fwd(q, k, v, causal=True, window_size_left=window - 1, window_size_right=0, return_lse=True)[:2]
    return out, lse


@flash_attention_forward.register_fake
def _(q, k, v, window):
    return torch.empty_like(q), q.new_empty((q.size(0), q.size(2), q.size(1)), dtype=torch.float32)


@torch.library.custom_op("hymba::flash_attention_backward", mutates_args=())
def flash_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             grad: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from flash_attn.cute.interface import _flash_attn_bwd
    dq, dk, dv = _flash_attn_bwd(q, k, v, out, grad, lse, causal=True, window_size_left=window - 1, window_size_right=0)
    return dq, dk, dv


@flash_attention_backward.register_fake
def _(q, k, v, out, lse, grad, window):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_attention_save(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3], *output)
    ctx.window = inputs[3]


def _flash_attention_grads(ctx, grad, _grad_lse):
    return *flash_attention_backward(*ctx.saved_tensors, grad.contiguous(), ctx.window), None


flash_attention_forward.register_autograd(_flash_attention_grads, setup_context=_flash_attention_save)


def sliding_window_attention_flash(q, k, v, window: int):
    return flash_attention_forward(q, k, v, window)[0]
