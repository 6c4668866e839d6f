"""Mamba's short causal convolution (depthwise, width 4, then SiLU) in Triton: a probe, not part of train_gpt.py.

train_gpt.causal_conv1d is a sum of four shifted products that torch.compile fuses. In the training step (one H200,
seventh session, `benchmark.py --profile`) its kernels take about 0.36 ms a layer, forward 0.09 and backward 0.27,
several times the traffic they move. Two designs here, each a custom operator with its backward:

- "recompute" (measured, seventh session; train_gpt.py at c6ea8e2 had it as CONV_BACKEND=triton): one kernel, which
  in the backward recomputes the pre-activation at the K positions each dx needs (K*K+K loads of x per position).
  Forward 0.064 ms a layer, faster than compiled; backward 0.49 ms, slower: the step took 66.2 ms against 64.2.
- "two_pass" (not yet timed on a GPU): the backward as two kernels. The first recomputes the pre-activation once (K
  loads of x), writes g, the gradient before the SiLU, in the input's dtype, and this block's sums for the weight and
  bias gradients; the second sums K shifted loads of g into dx. The forward is the same kernel as "recompute"'s.

Both keep the model's layout: x (b, d, l) laid out (d, b, l), as channel-major activations are, and their output
too. measurements/conv_configs.py times them; tests/test_triton_conv.py checks them on CPU in Triton's interpreter;
measurements/variants/triton_conv.py writes a train_gpt.py that uses this file's "two_pass" design on a GPU.
"""
import torch

try:  # with CUDA builds of PyTorch; without Triton the decorator below leaves plain functions, which nothing calls
    import triton
    import triton.language as tl
except ImportError:
    triton = None

CONV_BLOCK = dict(BD=4, BL=256, num_warps=4)  # channels x positions a program; warps (conv_configs.py's fastest)


@(triton.jit if triton else lambda fn: fn)
def _conv_silu_kernel(x, w, bias, grad, out, dw_parts, dim, length, stride_b, stride_d, K: tl.constexpr, BD: tl.constexpr,
                      BL: tl.constexpr, MODE: tl.constexpr):
    """MODE 0, forward: out[p] = silu(pre[p]), pre[p] = bias + sum_i w[i] x[p-(K-1)+i].
    MODE 1, backward in one pass ("recompute"): out[p] = dx[p] = sum_j w[K-1-j] g[p+j], g = grad * silu'(pre) recomputed
    at p..p+K-1; this block's sums of g[p] x[p-(K-1)+i] (dw) and of g[p] (dbias) to dw_parts[block, d, :K+1].
    MODE 2, first backward pass ("two_pass"): out[p] = g[p], and the same sums to dw_parts.
    MODE 3, second backward pass ("two_pass"): x holds g; out[p] = dx[p] = sum_j w[K-1-j] g[p+j]."""
    d = tl.program_id(0) * BD + tl.arange(0, BD)[:, None]
    pos = tl.program_id(1) * BL + tl.arange(0, BL)[None, :]
    ok, row = d < dim, tl.program_id(2) * stride_b + d * stride_d  # x, grad and out in one layout
    parts = dw_parts + ((tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)) * dim + d) * (K + 1)
    acc = tl.zeros((BD, BL), dtype=tl.float32)
    if MODE == 3:
        for j in tl.static_range(K):
            g = tl.load(x + row + pos + j, mask=ok & (pos + j < length)).to(tl.float32)
            acc += tl.load(w + d * K + (K - 1 - j), mask=ok) * g
    else:
        for j in tl.static_range(K if MODE == 1 else 1):
            pre = tl.load(bias + d, mask=ok)
            for i in tl.static_range(K):
                src = pos + j - (K - 1) + i
                pre += tl.load(w + d * K + i, mask=ok) * tl.load(x + row + src, mask=ok & (src >= 0) & (src < length)).to(tl.float32)
            sig = tl.sigmoid(pre)
            if MODE == 0:
                acc = pre * sig
            else:
                g = tl.load(grad + row + pos + j, mask=ok & (pos + j < length)).to(tl.float32) * sig * (1 + pre * (1 - sig))
                if MODE == 2:
                    acc += g
                else:
                    acc += tl.load(w + d * K + (K - 1 - j), mask=ok) * g
                if j == 0:
                    for i in tl.static_range(K):
                        src = pos - (K - 1) + i
                        xs = tl.load(x + row + src, mask=ok & (src >= 0) & (pos < length)).to(tl.float32)
                        tl.store(parts + i, tl.sum(g * xs, axis=1)[:, None], mask=ok)
                    tl.store(parts + K, tl.sum(g, axis=1)[:, None], mask=ok)
    tl.store(out + row + pos, acc.to(out.dtype.element_ty), mask=ok & (pos < length))


def channel_major(x):  # (b, d, l) laid out (d, b, l), as the model's activations: free for those, else a copy
    return x.transpose(0, 1).contiguous().transpose(0, 1)


def conv_silu_launch(x, weight, bias, mode: int, grad=None):
    """Mode 0: the output. Mode 1: dx, dweight, dbias in one pass. Mode 2, then 3: the same in two passes."""
    (b, dim, length), k = x.shape, weight.size(1)
    grid = (triton.cdiv(dim, CONV_BLOCK["BD"]), triton.cdiv(length, CONV_BLOCK["BL"]), b)
    out = torch.empty_like(x)
    if mode == 0:
        _conv_silu_kernel[grid](x, weight, bias, x, out, bias, dim, length, x.stride(0), x.stride(1), k, MODE=0, **CONV_BLOCK)
        return out
    dw_parts = x.new_empty(b * grid[1], dim, k + 1, dtype=torch.float32)
    _conv_silu_kernel[grid](x, weight, bias, grad, out, dw_parts, dim, length, x.stride(0), x.stride(1), k, MODE=mode,
                            **CONV_BLOCK)
    if mode == 2:  # out holds g: the second pass turns it into dx
        g, out = out, torch.empty_like(x)
        _conv_silu_kernel[grid](g, weight, bias, g, out, bias, dim, length, x.stride(0), x.stride(1), k, MODE=3, **CONV_BLOCK)
    dw, dbias = dw_parts.sum(0).split([k, 1], dim=1)
    return [out, dw.contiguous(), dbias.squeeze(1).contiguous()]  # strides as the inputs', as register_fake says


BACKWARD_MODES = {"recompute": 1, "two_pass": 2}


@torch.library.custom_op("hymba_probe::conv_silu", mutates_args=())
def conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, backward_mode: int) -> torch.Tensor:
    return conv_silu_launch(x, weight, bias, 0)


@torch.library.custom_op("hymba_probe::conv_silu_backward", mutates_args=())
def conv_silu_backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grad: torch.Tensor,
                       backward_mode: int) -> list[torch.Tensor]:
    return conv_silu_launch(x, weight, bias, backward_mode, channel_major(grad))


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.backward_mode = inputs[3]


conv_silu.register_fake(lambda x, weight, bias, backward_mode: torch.empty_like(x))
conv_silu_backward.register_fake(lambda x, weight, bias, grad, backward_mode: [
    torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)])
conv_silu.register_autograd(lambda ctx, grad: (*conv_silu_backward(*ctx.saved_tensors, grad, ctx.backward_mode), None),
                            setup_context=_save)


def causal_conv1d_triton(x, weight, bias, design: str = "two_pass"):
    """train_gpt.causal_conv1d's function: x (b, d, l), weight (d, k), bias (d,); the output laid out as channel_major."""
    return conv_silu(channel_major(x), weight.float(), bias.float(), BACKWARD_MODES[design])
