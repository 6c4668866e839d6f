"""A selective scan in Triton that walks positions one by one, token-major (a probe for issue 11).

The sixth session's Triton scan (triton_scan.py) used Triton's associative scan over position-contiguous tiles and came
out 3.5 times slower than mamba-ssm's. This one keeps the model's token-major layout (batch, positions, channels), so
that one position of a block of channels is one contiguous load, and lets each lane carry its channel's state from one
position to the next, as mamba-ssm's threads do inside their chunks. Parallelism comes from chunks of positions:
(1) every chunk walks from a zero state and keeps its end state and the sum of its step sizes; (2) one short walk
over the chunks gives each its true start state; (3) every chunk walks again from that state, writes the output and
keeps the state every SUBTILE positions for the backward. The backward is the same three passes backward in time for
the state's gradient g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}; its last pass recomputes the states of one subtile at
a time from the kept one, held in registers, then walks the subtile backward.

Measured in the eleventh session on one H200 (measurements/seq_scan_configs.py, one layer's shape, 15 settings): correct
(within 1e-5 of the reference; tests/test_seq_scan.py on CPU and on the GPU) but slower than mamba-ssm's kernel: 1.71 ms
forward + backward at its fastest (64 channels a program, chunks of 256, subtile 2), against mamba-ssm's 1.19 ms a layer
in that session's step profile. Every pass walks its chunk, so the scan's arithmetic runs twice each way, and the
backward sums dB and dC across lanes at every position; the README gives each kernel's time.

    selective_scan_tokens(u, delta, A, B, C, D, z, delta_bias)   # u, delta, z (b, l, d); B, C (b, l, n); as mamba-ssm's
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _step_size(delta_ptr, bias, offset, inside):  # dt = softplus(delta + bias), 0 beyond the end; and delta + bias
    x = tl.load(delta_ptr + offset, mask=inside, other=0.0).to(tl.float32) + bias
    return tl.where(inside, tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x))), 0.0), x


@triton.jit
def _per_state(ptr, offset, mask, N: tl.constexpr):  # B_t or C_t: N scalars, 0 beyond the end
    values = ()
    for n in tl.static_range(N):
        values += (tl.load(ptr + offset + n, mask=mask, other=0.0).to(tl.float32),)
    return values


@triton.jit
def _rows(ptr, index, mask, N: tl.constexpr):  # (channels, N) fp32 at index * N + n: N channel vectors
    values = ()
    for n in tl.static_range(N):
        values += (tl.load(ptr + index * N + n, mask=mask, other=0.0),)
    return values


@triton.jit
def _store_rows(ptr, index, values, mask, N: tl.constexpr):
    for n in tl.static_range(N):
        tl.store(ptr + index * N + n, values[n], mask=mask)


@triton.jit
def _program(A_ptr, bias_ptr, D_ptr, dim, BLOCK: tl.constexpr, N: tl.constexpr):
    """A program's batch, chunk and channels, and its channels' A (N vectors), step-size bias and D."""
    d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    channel = d < dim
    return (tl.program_id(0), tl.program_id(2), d, channel, _rows(A_ptr, d, channel, N),
            tl.load(bias_ptr + d, mask=channel, other=0.0), tl.load(D_ptr + d, mask=channel, other=0.0))


@triton.jit
def _advance(state, dt, dtu, A, Bt, N: tl.constexpr):  # h_t = exp(dt A) h_{t-1} + dt u B_t, state by state
    new = ()
    for n in tl.static_range(N):
        new += (tl.exp(dt * A[n]) * state[n] + dtu * Bt[n],)
    return new


# Inside a program every tensor is one vector over its block of channels, and the N states are a tuple of such vectors:
# a lane holds its channels' whole state, and no value changes layout between lanes from one position to the next.
@triton.jit
def _chunk_summary(u_ptr, delta_ptr, z_ptr, dout_ptr, B_ptr, C_ptr, A_ptr, bias_ptr, end_ptr, dtsum_ptr, s_b, s_l,
                   sz_b, sz_l, sg_b, sg_l, sB_b, sB_l, sC_b, sC_l, length, dim, BACKWARD: tl.constexpr,
                   BLOCK: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr, SUBTILE: tl.constexpr):
    """Pass 1: a chunk from zero. Forward: its end state. Backward: exp(dt_s A) g_s at its first position s."""
    b, c, d, channel, A, bias, _ = _program(A_ptr, bias_ptr, bias_ptr, dim, BLOCK, N)
    state, dtsum = (), tl.zeros((BLOCK,), tl.float32)
    for n in tl.static_range(N):
        state += (tl.zeros((BLOCK,), tl.float32),)
    for k in range(CHUNK // SUBTILE):
        for j in tl.static_range(SUBTILE):  # unrolled, so that the loads of a subtile can be issued together
            i = k * SUBTILE + j
            t = c * CHUNK + (CHUNK - 1 - i if BACKWARD else i)
            inside = channel & (t < length)
            dt, _ = _step_size(delta_ptr, bias, b * s_b + t * s_l + d, inside)
            new = ()
            if BACKWARD:
                z = tl.load(z_ptr + b * sz_b + t * sz_l + d, mask=inside, other=0.0).to(tl.float32)
                dy = tl.load(dout_ptr + b * sg_b + t * sg_l + d, mask=inside, other=0.0).to(tl.float32) * z * tl.sigmoid(z)
                Ct = _per_state(C_ptr, b * sC_b + t * sC_l, t < length, N)
                for n in tl.static_range(N):
                    new += (tl.exp(dt * A[n]) * (state[n] + dy * Ct[n]),)
            else:
                dtu = dt * tl.load(u_ptr + b * s_b + t * s_l + d, mask=inside, other=0.0).to(tl.float32)
                new = _advance(state, dt, dtu, A, _per_state(B_ptr, b * sB_b + t * sB_l, t < length, N), N)
            state = new
            dtsum += dt
    _store_rows(end_ptr, (b * tl.num_programs(2) + c) * dim + d, state, channel, N)
    tl.store(dtsum_ptr + (b * tl.num_programs(2) + c) * dim + d, dtsum, mask=channel)


@triton.jit
def _carry(end_ptr, dtsum_ptr, A_ptr, dim, chunks: tl.constexpr, BACKWARD: tl.constexpr, BLOCK: tl.constexpr,
           N: tl.constexpr):
    """Pass 2, in place: each chunk's summary becomes what enters it (the state before it, or the gradient after it)."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    channel = d < dim
    A = _rows(A_ptr, d, channel, N)
    carry = ()
    for n in tl.static_range(N):
        carry += (tl.zeros((BLOCK,), tl.float32),)
    for i in range(chunks):
        c = chunks - 1 - i if BACKWARD else i
        index = (b * chunks + c) * dim + d
        summary = _rows(end_ptr, index, channel, N)
        dtsum = tl.load(dtsum_ptr + index, mask=channel, other=0.0)
        _store_rows(end_ptr, index, carry, channel, N)
        new = ()
        for n in tl.static_range(N):
            new += (tl.exp(dtsum * A[n]) * carry[n] + summary[n],)
        carry = new


@triton.jit
def _scan_output(u_ptr, delta_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, start_ptr, kept_ptr, out_ptr, s_b, s_l,
                 sz_b, sz_l, sB_b, sB_l, sC_b, sC_l, so_b, so_l, length, dim, BLOCK: tl.constexpr, N: tl.constexpr,
                 CHUNK: tl.constexpr, SUBTILE: tl.constexpr):
    """Forward, pass 3: y = C h + D u gated by silu(z); the state before every SUBTILE positions kept."""
    b, c, d, channel, A, bias, D = _program(A_ptr, bias_ptr, D_ptr, dim, BLOCK, N)
    state = _rows(start_ptr, (b * tl.num_programs(2) + c) * dim + d, channel, N)
    subtiles = tl.num_programs(2) * (CHUNK // SUBTILE)
    for i in range(CHUNK // SUBTILE):
        k = c * (CHUNK // SUBTILE) + i
        _store_rows(kept_ptr, (b * subtiles + k) * dim + d, state, channel, N)
        loaded = ()
        for j in tl.static_range(SUBTILE):  # all loads first: stores of out would keep later loads behind them
            t = k * SUBTILE + j
            inside = channel & (t < length)
            dt, _ = _step_size(delta_ptr, bias, b * s_b + t * s_l + d, inside)
            loaded += ((dt, tl.load(u_ptr + b * s_b + t * s_l + d, mask=inside, other=0.0).to(tl.float32),
                        tl.load(z_ptr + b * sz_b + t * sz_l + d, mask=inside, other=0.0).to(tl.float32),
                        _per_state(B_ptr, b * sB_b + t * sB_l, t < length, N),
                        _per_state(C_ptr, b * sC_b + t * sC_l, t < length, N)),)
        for j in tl.static_range(SUBTILE):
            t = k * SUBTILE + j
            dt, u, z, Bt, Ct = loaded[j]
            state, y = _advance(state, dt, dt * u, A, Bt, N), D * u
            for n in tl.static_range(N):
                y += Ct[n] * state[n]
            tl.store(out_ptr + b * so_b + t * so_l + d, (y * z * tl.sigmoid(z)).to(out_ptr.dtype.element_ty),
                     mask=channel & (t < length))


@triton.jit
def _scan_grads(u_ptr, delta_ptr, z_ptr, dout_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, kept_ptr, after_ptr,
                du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, s_b, s_l, sz_b, sz_l, sg_b, sg_l,
                sB_b, sB_l, sC_b, sC_l, length, dim, BLOCK: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr,
                SUBTILE: tl.constexpr):
    """Backward, pass 3: subtiles last to first; each recomputes its states from the kept one, then walks backward with
    g from the gradient that enters the chunk. Sums over channels (dB, dC) or positions (dA, dD, dbias) added atomically."""
    b, c, d, channel, A, bias, D = _program(A_ptr, bias_ptr, D_ptr, dim, BLOCK, N)
    carry = _rows(after_ptr, (b * tl.num_programs(2) + c) * dim + d, channel, N)
    dA, dD, dbias = (), tl.zeros((BLOCK,), tl.float32), tl.zeros((BLOCK,), tl.float32)
    for n in tl.static_range(N):
        dA += (tl.zeros((BLOCK,), tl.float32),)
    subtiles = tl.num_programs(2) * (CHUNK // SUBTILE)
    for i in range(CHUNK // SUBTILE):
        k = (c + 1) * (CHUNK // SUBTILE) - 1 - i
        state = _rows(kept_ptr, (b * subtiles + k) * dim + d, channel, N)
        states, inputs = (state,), ()
        for j in tl.static_range(SUBTILE):  # the subtile's states, in registers, and every load of the subtile
            t = k * SUBTILE + j
            inside = channel & (t < length)
            dt, x = _step_size(delta_ptr, bias, b * s_b + t * s_l + d, inside)
            u = tl.load(u_ptr + b * s_b + t * s_l + d, mask=inside, other=0.0).to(tl.float32)
            Bt = _per_state(B_ptr, b * sB_b + t * sB_l, t < length, N)
            state = _advance(state, dt, dt * u, A, Bt, N)
            z = tl.load(z_ptr + b * sz_b + t * sz_l + d, mask=inside, other=0.0).to(tl.float32)
            dout = tl.load(dout_ptr + b * sg_b + t * sg_l + d, mask=inside, other=0.0).to(tl.float32)
            states += (state,)
            inputs += ((dt, x, u, z, dout, Bt, _per_state(C_ptr, b * sC_b + t * sC_l, t < length, N)),)
        for r in tl.static_range(SUBTILE - 1, -1, -1):
            t = k * SUBTILE + r
            inside = channel & (t < length)
            dt, x, u, z, dout, Bt, Ct = inputs[r]
            gate = tl.sigmoid(z)
            y = D * u
            for n in tl.static_range(N):
                y += Ct[n] * states[r + 1][n]
            dy = dout * z * gate
            gB, ddt, new, newA = tl.zeros((BLOCK,), tl.float32), tl.zeros((BLOCK,), tl.float32), (), ()
            for n in tl.static_range(N):
                g = carry[n] + dy * Ct[n]
                decay = tl.exp(dt * A[n])
                decayed = g * states[r][n] * decay  # dt's gradient through exp(dt A) h_{t-1}, before the factor A
                gB += g * Bt[n]
                ddt += decayed * A[n]
                newA += (dA[n] + decayed * dt,)
                new += (decay * g,)
                tl.atomic_add(dB_ptr + (b * length + t) * N + n, tl.sum(g * dt * u, 0), mask=t < length, sem="relaxed")
                tl.atomic_add(dC_ptr + (b * length + t) * N + n, tl.sum(dy * states[r + 1][n], 0), mask=t < length,
                              sem="relaxed")
            carry, dA = new, newA
            ddelta = (ddt + gB * u) * tl.sigmoid(x)
            at = b * s_b + t * s_l + d
            tl.store(du_ptr + at, (gB * dt + D * dy).to(du_ptr.dtype.element_ty), mask=inside)
            tl.store(ddelta_ptr + at, ddelta.to(ddelta_ptr.dtype.element_ty), mask=inside)
            tl.store(dz_ptr + at, (dout * y * gate * (1.0 + z * (1.0 - gate))).to(dz_ptr.dtype.element_ty), mask=inside)
            dD += dy * u
            dbias += ddelta
    for n in tl.static_range(N):
        tl.atomic_add(dA_ptr + d * N + n, dA[n], mask=channel, sem="relaxed")
    tl.atomic_add(dD_ptr + d, dD, mask=channel, sem="relaxed")
    tl.atomic_add(dbias_ptr + d, dbias, mask=channel, sem="relaxed")


def _summaries(u, delta, z, dout, B, C, A, bias, block, chunk, subtile, warps, backward):
    batch, length, dim = u.shape
    grid = (batch, triton.cdiv(dim, block), triton.cdiv(length, chunk))
    end = u.new_empty((batch, grid[2], dim, A.size(1)), dtype=torch.float32)
    dtsum = u.new_empty((batch, grid[2], dim), dtype=torch.float32)
    _chunk_summary[grid](u, delta, z, dout, B, C, A, bias, end, dtsum, *u.stride()[:2], *z.stride()[:2], *dout.stride()[:2],
                         *B.stride()[:2], *C.stride()[:2], length, dim, backward, block, A.size(1), chunk, subtile,
                         num_warps=warps)
    _carry[(batch, grid[1])](end, dtsum, A, dim, grid[2], backward, block, A.size(1), num_warps=warps)
    return grid, end


@torch.library.custom_op("probe::seq_scan_forward", mutates_args=())
def seq_scan_forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     D: torch.Tensor, z: torch.Tensor, delta_bias: torch.Tensor, block: int, chunk: int, subtile: int,
                     warps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated output (b, l, d), and the state before every subtile (b, subtiles, d, n), kept for the backward."""
    grid, start = _summaries(u, delta, z, u, B, C, A, delta_bias, block, chunk, subtile, warps, False)
    batch, length, dim = u.shape
    kept = u.new_empty((batch, grid[2] * (chunk // subtile), dim, A.size(1)), dtype=torch.float32)
    out = u.new_empty(u.shape)
    _scan_output[grid](u, delta, z, B, C, A, D, delta_bias, start, kept, out, *u.stride()[:2], *z.stride()[:2],
                       *B.stride()[:2], *C.stride()[:2], *out.stride()[:2], length, dim, block, A.size(1), chunk, subtile,
                       num_warps=warps)
    return out, kept


@seq_scan_forward.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, block, chunk, subtile, warps):
    subtiles = -(-u.size(1) // chunk) * (chunk // subtile)
    return u.new_empty(u.shape), u.new_empty((u.size(0), subtiles, u.size(2), A.size(1)), dtype=torch.float32)


@torch.library.custom_op("probe::seq_scan_backward", mutates_args=())
def seq_scan_backward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor, z: torch.Tensor, delta_bias: torch.Tensor, dout: torch.Tensor, kept: torch.Tensor,
                      block: int, chunk: int, subtile: int, warps: int) -> list[torch.Tensor]:
    grid, after = _summaries(u, delta, z, dout, B, C, A, delta_bias, block, chunk, subtile, warps, True)
    batch, length, dim = u.shape
    du, ddelta, dz = torch.empty_like(u), torch.empty_like(u), torch.empty_like(u)  # laid out as u: contiguous
    dA, dD, dbias = torch.zeros_like(A), torch.zeros_like(D), torch.zeros_like(delta_bias)
    dB, dC = (torch.zeros(B.shape, dtype=torch.float32, device=u.device) for _ in range(2))
    _scan_grads[grid](u, delta, z, dout, B, C, A, D, delta_bias, kept, after, du, ddelta, dz, dA, dB, dC, dD, dbias,
                      *u.stride()[:2], *z.stride()[:2], *dout.stride()[:2], *B.stride()[:2], *C.stride()[:2], length, dim,
                      block, A.size(1), chunk, subtile, num_warps=warps)
    return [du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias]  # in the order of the inputs


@seq_scan_backward.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, dout, kept, block, chunk, subtile, warps):
    return [t.new_empty(t.shape) for t in (u, delta, A, B, C, D, z, delta_bias)]


def _keep_for_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8], output[1])
    ctx.config = inputs[8:]


def _backward(ctx, grad, _grad_kept):
    *inputs, kept = ctx.saved_tensors
    return (*seq_scan_backward(*inputs, grad.contiguous(), kept, *ctx.config),
            None, None, None, None)


seq_scan_forward.register_autograd(_backward, setup_context=_keep_for_backward)


def selective_scan_tokens(u, delta, A, B, C, D, z, delta_bias, block: int = 32, chunk: int = 256, subtile: int = 16,
                          warps: int = 1):
    """Token-major: u, delta, z (b, l, d), B, C (b, l, n); z, B and C may be slices (stride 1 along the last dimension);
    A (d, n), D and delta_bias (d,). block channels and chunk positions per program; chunk a multiple of subtile."""
    u, delta = u.contiguous(), delta.contiguous()  # one set of strides for both, and for the gradients
    B, C, z = (t if t.stride(-1) == 1 else t.contiguous() for t in (B, C, z))
    A, D, delta_bias = (t.float().contiguous() for t in (A, D, delta_bias))
    return seq_scan_forward(u, delta, A, B, C, D, z, delta_bias, block, chunk, subtile, warps)[0]
