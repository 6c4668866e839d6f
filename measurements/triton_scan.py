"""A selective scan in Triton, measured against mamba-ssm's kernel and not adopted (a probe, kept for whoever tries next).

It computes what train_gpt.py's selective_scan_reference computes (the same arguments and result), as a custom
operator with its own backward. Measured in the sixth session on one H200, with this code inside train_gpt.py (commit
b7214cf; moved here unchanged): correct (tests/test_gpu.py of that commit, 9 passed; tests/test_triton_scan.py here
on CPU through TRITON_INTERPRET=1), but 4.40 ms a layer for forward and backward at its fastest launch settings,
against mamba-ssm's 1.27 (measurements/scan_configs.py). The passes' own times (measurements/scan_designs.py) say why:
Triton's associative scan over a (channels, states, positions) tile costs about five times a plain copy of the same
data, and this design runs five such scans (two forward, three backward) where mamba-ssm runs three.

    from triton_scan import selective_scan_triton   # on a GPU; on CPU with TRITON_INTERPRET=1 set before the import
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

jit = triton.jit


# mamba-ssm's kernel gives each (batch, channel) one thread
# block that walks the whole sequence, and its backward adds dB and dC for every channel atomically: at state size 4
# it waits on memory and atomics (9.5 ms of a 65 ms step). Here a program takes a block of channels and one chunk
# of positions, so there are thousands of them, in three passes: (1) every chunk scans from a zero state and keeps
# its end state and total decay; (2) one short scan over those pairs gives every chunk the state it really starts
# from; (3) every chunk scans again from that state and writes y. The backward is the same three passes backward in
# time for the state's gradient g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}, with B's and C's gradients summed over
# the program's channels before the atomic add. The chunk start states are what the forward keeps for it.
# Inside a program, tensors are (channels, states, positions), positions contiguous as in memory.
@jit
def _then(a1, h1, a2, h2):  # h -> a1 h + h1, then h -> a2 h + h2: the scan's associative step
    return a1 * a2, h1 * a2 + h2


@jit
def _rows(ptr, stride_b, stride_d, b, d, t, length):  # (channels, positions) in fp32; beyond the end: 0
    return tl.load(ptr + b * stride_b + d[:, None] * stride_d + t[None, :], mask=(t < length)[None, :], other=0.0).to(tl.float32)


@jit
def _per_state(ptr, stride_b, stride_n, b, n, t, length):  # B or C: (states, positions) in fp32; beyond the end: 0
    return tl.load(ptr + b * stride_b + n[:, None] * stride_n + t[None, :], mask=(t < length)[None, :], other=0.0).to(tl.float32)


@jit
def _decays(delta_ptr, A_ptr, bias_ptr, sd_b, sd_d, b, d, n, t, length, N: tl.constexpr):
    """dt = softplus(delta + bias) (0 beyond the end), its input x, A, and the decays exp(dt A) (channels, states, positions)."""
    x = _rows(delta_ptr, sd_b, sd_d, b, d, t, length) + tl.load(bias_ptr + d)[:, None]
    dt = tl.where((t < length)[None, :], tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x))), 0.0)  # as F.softplus
    A = tl.load(A_ptr + d[:, None] * N + n[None, :])
    return dt, x, A, tl.exp(dt[:, None, :] * A[:, :, None])


@jit
def _chunk_index(b, d, n, c, BD: tl.constexpr, N: tl.constexpr):  # into the (batch, channels, chunks, states) buffers
    return ((b * tl.num_programs(1) * BD + d[:, None]) * tl.num_programs(2) + c) * N + n[None, :]


@jit
def _keep(ptr, index, values, at):  # values (channels, states, positions) at one position, stored at index
    tl.store(ptr + index, tl.sum(tl.where((tl.arange(0, values.shape[2]) == at)[None, None, :], values, 0.0), 2))


@jit
def _scan_chunks(u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, C_ptr, z_ptr, dout_ptr, decay_ptr, state_ptr, su_b, su_d, sd_b,
                 sd_d, sB_b, sB_n, sC_b, sC_n, sz_b, sz_d, length, BACKWARD: tl.constexpr, BD: tl.constexpr,
                 BT: tl.constexpr, N: tl.constexpr):
    """Pass 1: each chunk from zero, forward (its last position) or, for the gradient, backward (its first)."""
    b, d, c, n = tl.program_id(0), tl.program_id(1) * BD + tl.arange(0, BD), tl.program_id(2), tl.arange(0, N)
    t = c * BT + tl.arange(0, BT)
    if BACKWARD:  # g_t's decay is the next position's
        _, _, _, decay = _decays(delta_ptr, A_ptr, bias_ptr, sd_b, sd_d, b, d, n, t + 1, length, N)
        z = _rows(z_ptr, sz_b, sz_d, b, d, t, length)
        dy = _rows(dout_ptr, length * tl.num_programs(1) * BD, length, b, d, t, length) * z * tl.sigmoid(z)
        inputs = dy[:, None, :] * _per_state(C_ptr, sC_b, sC_n, b, n, t, length)[None, :, :]
    else:
        dt, _, _, decay = _decays(delta_ptr, A_ptr, bias_ptr, sd_b, sd_d, b, d, n, t, length, N)
        u = _rows(u_ptr, su_b, su_d, b, d, t, length)
        inputs = (dt * u)[:, None, :] * _per_state(B_ptr, sB_b, sB_n, b, n, t, length)[None, :, :]
    decay, state = tl.associative_scan((decay, inputs), 2, _then, reverse=BACKWARD)
    index, at = _chunk_index(b, d, n, c, BD, N), 0 if BACKWARD else BT - 1
    _keep(decay_ptr, index, decay, at)
    _keep(state_ptr, index, state, at)


@jit
def _carry_across_chunks(decay_ptr, state_ptr, start_ptr, chunks, BACKWARD: tl.constexpr, CP: tl.constexpr, N: tl.constexpr):
    """Pass 2, one (batch, channel) per program: scans the chunks' (decay, state) pairs; writes for every chunk the state it
    starts from (forward) or the gradient that enters it from the next chunk (backward)."""
    n, c = tl.arange(0, N)[:, None], tl.arange(0, CP)[None, :]
    base = tl.program_id(0) * chunks * N
    decay = tl.load(decay_ptr + base + c * N + n, mask=c < chunks, other=1.0)
    state = tl.load(state_ptr + base + c * N + n, mask=c < chunks, other=0.0)
    _, state = tl.associative_scan((decay, state), 1, _then, reverse=BACKWARD)
    to = c - 1 if BACKWARD else c + 1  # chunk c's result is where the next chunk in scan order starts
    tl.store(start_ptr + base + to * N + n, state, mask=(to >= 0) & (to < chunks))
    tl.store(start_ptr + base + (chunks - 1 if BACKWARD else 0) * N + n, tl.zeros((N, 1), tl.float32))


@jit
def _scan_states(u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, start_ptr, su_b, su_d, sd_b, sd_d, sB_b, sB_n, b, d, n, c, t,
                 length, BD: tl.constexpr, N: tl.constexpr):
    """Pass 3's states h_t from the chunk's start state, with what the gradients need besides."""
    dt, x, A, decay = _decays(delta_ptr, A_ptr, bias_ptr, sd_b, sd_d, b, d, n, t, length, N)
    u, B = _rows(u_ptr, su_b, su_d, b, d, t, length), _per_state(B_ptr, sB_b, sB_n, b, n, t, length)
    inputs = (dt * u)[:, None, :] * B[None, :, :]
    decay, h = tl.associative_scan((decay, inputs), 2, _then)
    return h + decay * tl.load(start_ptr + _chunk_index(b, d, n, c, BD, N))[:, :, None], inputs, dt, x, A, u, B


@jit
def _scan_output(u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, C_ptr, D_ptr, z_ptr, start_ptr, out_ptr, su_b, su_d, sd_b, sd_d,
                 sB_b, sB_n, sC_b, sC_n, sz_b, sz_d, length, BD: tl.constexpr, BT: tl.constexpr, N: tl.constexpr):
    """Forward, pass 3: y = C h + D u, gated by silu(z)."""
    b, d, c, n = tl.program_id(0), tl.program_id(1) * BD + tl.arange(0, BD), tl.program_id(2), tl.arange(0, N)
    t = c * BT + tl.arange(0, BT)
    h, _, _, _, _, u, _ = _scan_states(u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, start_ptr, su_b, su_d, sd_b, sd_d, sB_b, sB_n,
                                       b, d, n, c, t, length, BD, N)
    z = _rows(z_ptr, sz_b, sz_d, b, d, t, length)
    y = tl.sum(h * _per_state(C_ptr, sC_b, sC_n, b, n, t, length)[None, :, :], 1) + tl.load(D_ptr + d)[:, None] * u
    rows = b * length * tl.num_programs(1) * BD + d[:, None] * length + t[None, :]
    tl.store(out_ptr + rows, (y * z * tl.sigmoid(z)).to(out_ptr.dtype.element_ty), mask=(t < length)[None, :])


@jit
def _scan_grads(u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, C_ptr, D_ptr, z_ptr, dout_ptr, start_ptr, carry_ptr,
                du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, su_b, su_d, sd_b, sd_d, sB_b, sB_n, sC_b,
                sC_n, sz_b, sz_d, length, BD: tl.constexpr, BT: tl.constexpr, N: tl.constexpr):
    """Backward, pass 3: the states again, then their gradient g from the carried one, then every input's gradient;
    those summed over channels or positions (A, B, C, D, bias) are added atomically, B's and C's once per program."""
    b, d, c, n = tl.program_id(0), tl.program_id(1) * BD + tl.arange(0, BD), tl.program_id(2), tl.arange(0, N)
    t = c * BT + tl.arange(0, BT)
    h, inputs, dt, x, A, u, B = _scan_states(u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, start_ptr, su_b, su_d, sd_b, sd_d,
                                             sB_b, sB_n, b, d, n, c, t, length, BD, N)
    C, z = _per_state(C_ptr, sC_b, sC_n, b, n, t, length), _rows(z_ptr, sz_b, sz_d, b, d, t, length)
    dout, D = _rows(dout_ptr, length * tl.num_programs(1) * BD, length, b, d, t, length), tl.load(D_ptr + d)
    y, gate = tl.sum(h * C[None, :, :], 1) + D[:, None] * u, tl.sigmoid(z)
    dy, dz = dout * z * gate, dout * y * gate * (1.0 + z * (1.0 - gate))
    _, _, _, decay_next = _decays(delta_ptr, A_ptr, bias_ptr, sd_b, sd_d, b, d, n, t + 1, length, N)
    decay, g = tl.associative_scan((decay_next, dy[:, None, :] * C[None, :, :]), 2, _then, reverse=True)
    g += decay * tl.load(carry_ptr + _chunk_index(b, d, n, c, BD, N))[:, :, None]
    decayed = h - inputs  # exp(dt_t A) h_{t-1}
    ddelta = tl.sum(g * (decayed * A[:, :, None] + u[:, None, :] * B[None, :, :]), 1) * tl.sigmoid(x)
    du = tl.sum(g * B[None, :, :], 1) * dt + D[:, None] * dy
    rows, inside = b * length * tl.num_programs(1) * BD + d[:, None] * length + t[None, :], (t < length)[None, :]
    tl.store(du_ptr + rows, du.to(du_ptr.dtype.element_ty), mask=inside)
    tl.store(ddelta_ptr + rows, ddelta.to(ddelta_ptr.dtype.element_ty), mask=inside)
    tl.store(dz_ptr + rows, dz.to(dz_ptr.dtype.element_ty), mask=inside)
    per_position = (b * N + n[:, None]) * length + t[None, :]
    tl.atomic_add(dB_ptr + per_position, tl.sum(g * (dt * u)[:, None, :], 0), mask=inside, sem="relaxed")
    tl.atomic_add(dC_ptr + per_position, tl.sum(dy[:, None, :] * h, 0), mask=inside, sem="relaxed")
    tl.atomic_add(dA_ptr + d[:, None] * N + n[None, :], tl.sum(g * decayed * dt[:, None, :], 2), sem="relaxed")
    tl.atomic_add(dD_ptr + d, tl.sum(dy * u, 1), sem="relaxed")
    tl.atomic_add(dbias_ptr + d, tl.sum(ddelta, 1), sem="relaxed")


def _scan_launch(u, delta, B, C, z, block_d: int, chunk: int):
    """The grid (batch, channel blocks, chunks), and the strides that every pass takes."""
    batch, dim, length = u.shape
    return (batch, dim // block_d, triton.cdiv(length, chunk)), [s for t in (u, delta, B, C, z) for s in t.stride()[:2]] + [length]


@torch.library.custom_op("hymba::scan_forward", mutates_args=())
def scan_forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                 z: torch.Tensor, delta_bias: torch.Tensor, block_d: int, chunk: int, warps: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated output, and every chunk's start state (batch, channels, chunks, states), kept for the backward."""
    grid, strides = _scan_launch(u, delta, B, C, z, block_d, chunk)
    batch, dim, n = u.size(0), u.size(1), A.size(1)
    decay = u.new_empty((batch, dim, grid[2], n), dtype=torch.float32)
    state, start, out = torch.empty_like(decay), torch.empty_like(decay), u.new_empty(u.shape)
    _scan_chunks[grid](u, delta, A, B, delta_bias, C, z, u, decay, state, *strides, False, block_d, chunk, n, num_warps=warps)
    _carry_across_chunks[(batch * dim,)](decay, state, start, grid[2], False, triton.next_power_of_2(grid[2]), n)
    _scan_output[grid](u, delta, A, B, delta_bias, C, D, z, start, out, *strides, block_d, chunk, n, num_warps=warps)
    return out, start


@scan_forward.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, block_d, chunk, warps):
    return u.new_empty(u.shape), u.new_empty((u.size(0), u.size(1), -(-u.size(2) // chunk), A.size(1)), dtype=torch.float32)


@torch.library.custom_op("hymba::scan_backward", mutates_args=())
def scan_backward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                  z: torch.Tensor, delta_bias: torch.Tensor, dout: torch.Tensor, start: torch.Tensor, block_d: int,
                  chunk: int, warps: int) -> list[torch.Tensor]:
    grid, strides = _scan_launch(u, delta, B, C, z, block_d, chunk)
    batch, dim, n = u.size(0), u.size(1), A.size(1)
    decay, state, carry = torch.empty_like(start), torch.empty_like(start), torch.empty_like(start)
    _scan_chunks[grid](u, delta, A, B, delta_bias, C, z, dout, decay, state, *strides, True, block_d, chunk, n, num_warps=warps)
    _carry_across_chunks[(batch * dim,)](decay, state, carry, grid[2], True, triton.next_power_of_2(grid[2]), n)
    du, ddelta, dz = u.new_empty(u.shape), delta.new_empty(u.shape), z.new_empty(u.shape)
    dA, dD, dbias = torch.zeros_like(A), torch.zeros_like(D), torch.zeros_like(delta_bias)
    dB, dC = (torch.zeros(B.shape, dtype=torch.float32, device=u.device) for _ in range(2))
    _scan_grads[grid](u, delta, A, B, delta_bias, C, D, z, dout, start, carry, du, ddelta, dz, dA, dB, dC, dD, dbias, *strides,
                      block_d, chunk, n, num_warps=warps)
    return [du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias]  # in the order of the inputs


@scan_backward.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, dout, start, block_d, chunk, warps):
    return [t.new_empty(t.shape) for t in (u, delta, A, B, C, D, z, delta_bias)]


def _keep_for_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8], output[1])
    ctx.config = inputs[8:]


def _backward(ctx, grad, _grad_start):
    *inputs, start = ctx.saved_tensors
    return (*scan_backward(*inputs, grad.contiguous(), start, *ctx.config), None, None, None)


scan_forward.register_autograd(_backward, setup_context=_keep_for_backward)


def selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, block_d: int = 8, chunk: int = 64, warps: int = 4):
    """block_d channels (cut to a divisor of the channel count) and chunk positions per program, both powers of two."""
    u, delta, B, C, z = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta, B, C, z))
    A, D, delta_bias = (t.float().contiguous() for t in (A, D, delta_bias))
    return scan_forward(u, delta, A, B, C, D, z, delta_bias, math.gcd(u.size(1), block_d), chunk, warps)[0]
