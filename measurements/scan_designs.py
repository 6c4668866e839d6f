"""Where the Triton scan's forward spends its time: each pass of measurements/triton_scan.py's kernels timed alone, against a plain
copy with the same grid, and against variant designs of its passes (a probe, not a tool of the training run).

    python measurements/scan_designs.py

Inputs: scan_configs.py's (one layer's scan at the record's per-GPU step, z, B and C sliced as the model passes them).
Variants: pass 1 without a scan (a chunk's end state is sum_t dt_t B_t u_t exp(A (T_end - T_t)) with T the running
sum of dt: exponents <= 0, so stable), pass 3 with the (channel, state) pairs as rows of a 2-D tile, and pass 3
looping over several chunks per program with the state carried in registers.
"""
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import triton_scan as ts  # noqa: E402
from benchmark import median_ms  # noqa: E402
from scan_configs import BATCH, DIM, LENGTH, STATE as N, inputs  # noqa: E402
from triton_scan import _chunk_index, _decays, _per_state, _rows, _then  # noqa: E402


@triton.jit
def copy_kernel(u_ptr, delta_ptr, z_ptr, out_ptr, length, BD: tl.constexpr, BT: tl.constexpr):
    b, d, c = tl.program_id(0), tl.program_id(1) * BD + tl.arange(0, BD), tl.program_id(2)
    t = c * BT + tl.arange(0, BT)
    rows = b * length * tl.num_programs(1) * BD + d[:, None] * length + t[None, :]
    x = tl.load(u_ptr + rows) + tl.load(delta_ptr + rows) + tl.load(z_ptr + rows)
    tl.store(out_ptr + rows, x)


@triton.jit
def chunk_ends_by_sum(u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, decay_ptr, state_ptr, su_b, su_d, sd_b, sd_d, sB_b, sB_n,
                      length, BD: tl.constexpr, BT: tl.constexpr, N: tl.constexpr):
    """Pass 1 without a scan over states: one running sum of dt per channel, then sums over positions."""
    b, d, c, n = tl.program_id(0), tl.program_id(1) * BD + tl.arange(0, BD), tl.program_id(2), tl.arange(0, N)
    t = c * BT + tl.arange(0, BT)
    x = _rows(delta_ptr, sd_b, sd_d, b, d, t, length) + tl.load(bias_ptr + d)[:, None]
    dt = tl.where((t < length)[None, :], tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x))), 0.0)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :])
    after = tl.sum(dt, 1)[:, None] - tl.cumsum(dt, 1)  # dt summed over the positions after t, >= 0
    u, B = _rows(u_ptr, su_b, su_d, b, d, t, length), _per_state(B_ptr, sB_b, sB_n, b, n, t, length)
    state = tl.sum(tl.exp(A[:, :, None] * after[:, None, :]) * (dt * u)[:, None, :] * B[None, :, :], 2)
    index = _chunk_index(b, d, n, c, BD, N)
    tl.store(decay_ptr + index, tl.exp(A * tl.sum(dt, 1)[:, None]))
    tl.store(state_ptr + index, state)


@triton.jit
def output_rows(u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, C_ptr, D_ptr, z_ptr, start_ptr, out_ptr, su_b, su_d, sd_b, sd_d,
                sB_b, sB_n, sC_b, sC_n, sz_b, sz_d, length, BD: tl.constexpr, BT: tl.constexpr, N: tl.constexpr):
    """Pass 3 with rows r = (channel r // N, state r % N): the scan on a 2-D tile, loads repeated per state."""
    b, c = tl.program_id(0), tl.program_id(2)
    r = tl.arange(0, BD * N)
    d, n = tl.program_id(1) * BD + r // N, r % N
    t = c * BT + tl.arange(0, BT)
    inside = (t < length)[None, :]
    x = tl.load(delta_ptr + b * sd_b + d[:, None] * sd_d + t[None, :], mask=inside, other=0.0).to(tl.float32)
    x += tl.load(bias_ptr + d)[:, None]
    dt = tl.where(inside, tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x))), 0.0)
    u = tl.load(u_ptr + b * su_b + d[:, None] * su_d + t[None, :], mask=inside, other=0.0).to(tl.float32)
    B = tl.load(B_ptr + b * sB_b + n[:, None] * sB_n + t[None, :], mask=inside, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + b * sC_b + n[:, None] * sC_n + t[None, :], mask=inside, other=0.0).to(tl.float32)
    decay = tl.exp(dt * tl.load(A_ptr + d * N + n)[:, None])
    decay, h = tl.associative_scan((decay, dt * u * B), 1, _then)
    start = tl.load(start_ptr + ((b * tl.num_programs(1) * BD + d) * tl.num_programs(2) + c) * N + n)
    h += decay * start[:, None]
    y = tl.sum(tl.reshape(h * C, (BD, N, BT)), 1)
    dd = tl.program_id(1) * BD + tl.arange(0, BD)
    u2 = _rows(u_ptr, su_b, su_d, b, dd, t, length)
    z = _rows(z_ptr, sz_b, sz_d, b, dd, t, length)
    y += tl.load(D_ptr + dd)[:, None] * u2
    rows = b * length * tl.num_programs(1) * BD + dd[:, None] * length + t[None, :]
    tl.store(out_ptr + rows, (y * z * tl.sigmoid(z)).to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def output_looped(u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, C_ptr, D_ptr, z_ptr, start_ptr, out_ptr, su_b, su_d, sd_b, sd_d,
                  sB_b, sB_n, sC_b, sC_n, sz_b, sz_d, length, chunks, BD: tl.constexpr, BT: tl.constexpr, N: tl.constexpr,
                  TILES: tl.constexpr):
    """Pass 3 over TILES chunks per program, the state carried in registers from one chunk to the next."""
    b, d, s, n = tl.program_id(0), tl.program_id(1) * BD + tl.arange(0, BD), tl.program_id(2), tl.arange(0, N)
    carry = tl.load(start_ptr + ((b * tl.num_programs(1) * BD + d[:, None]) * chunks + s * TILES) * N + n[None, :])
    D = tl.load(D_ptr + d)
    for i in tl.range(0, TILES, num_stages=2):
        t = (s * TILES + i) * BT + tl.arange(0, BT)
        dt, _, _, decay = _decays(delta_ptr, A_ptr, bias_ptr, sd_b, sd_d, b, d, n, t, length, N)
        u, B = _rows(u_ptr, su_b, su_d, b, d, t, length), _per_state(B_ptr, sB_b, sB_n, b, n, t, length)
        decay, h = tl.associative_scan((decay, (dt * u)[:, None, :] * B[None, :, :]), 2, _then)
        h += decay * carry[:, :, None]
        carry = tl.sum(tl.where((tl.arange(0, BT) == BT - 1)[None, None, :], h, 0.0), 2)
        z = _rows(z_ptr, sz_b, sz_d, b, d, t, length)
        y = tl.sum(h * _per_state(C_ptr, sC_b, sC_n, b, n, t, length)[None, :, :], 1) + D[:, None] * u
        rows = b * length * tl.num_programs(1) * BD + d[:, None] * length + t[None, :]
        tl.store(out_ptr + rows, (y * z * tl.sigmoid(z)).to(out_ptr.dtype.element_ty), mask=(t < length)[None, :])


def main():
    u, delta, A, B, C, D, z, bias = inputs().values()  # scan_configs.py's: the same shape and slices
    reference = ts.selective_scan_triton(u, delta, A, B, C, D, z, bias)
    print("| BD | BT | warps | kernel | ms | rel. error of the output |")
    print("|---|---|---|---|---|---|")
    for bd, bt, warps in [(4, 128, 4), (8, 64, 4), (2, 256, 4), (4, 64, 2), (8, 128, 8), (2, 128, 2)]:
        grid, strides = ts._scan_launch(u, delta, B, C, z, bd, bt)
        chunks = grid[2]
        decay = torch.empty((BATCH, DIM, chunks, N), device=u.device)
        state, start, out = torch.empty_like(decay), torch.empty_like(decay), torch.empty_like(u)
        row = lambda name, fn, check=None: print(f"| {bd} | {bt} | {warps} | {name} | {median_ms(fn, 3, 20):.3f} | "
                                                 f"{'' if check is None else f'{check():.2e}'} |", flush=True)
        error = lambda: ((out.float() - reference.float()).norm() / reference.float().norm()).item()
        try:
            row("copy (3 loads, 1 store)", lambda: copy_kernel[grid](u, delta, z, out, LENGTH, bd, bt, num_warps=warps))
            row("pass 1 (scan)", lambda: ts._scan_chunks[grid](u, delta, A, B, bias, C, z, u, decay, state, *strides, False,
                                                                bd, bt, N, num_warps=warps))
            row("pass 2", lambda: ts._carry_across_chunks[(BATCH * DIM,)](decay, state, start, chunks, False,
                                                                          triton.next_power_of_2(chunks), N))
            row("pass 3", lambda: ts._scan_output[grid](u, delta, A, B, bias, C, D, z, start, out, *strides, bd, bt, N,
                                                        num_warps=warps), error)
            keep = state.clone()
            row("pass 1 by sums", lambda: chunk_ends_by_sum[grid](u, delta, A, B, bias, decay, state, *strides[:6], LENGTH,
                                                                  bd, bt, N, num_warps=warps),
                lambda: ((state - keep).norm() / keep.norm()).item())
            row("pass 3 on rows", lambda: output_rows[grid](u, delta, A, B, bias, C, D, z, start, out, *strides, bd, bt, N,
                                                            num_warps=warps), error)
            for tiles in (4, 16):
                looped = (BATCH, DIM // bd, chunks // tiles)
                row(f"pass 3, {tiles} chunks a program", lambda: output_looped[looped](
                    u, delta, A, B, bias, C, D, z, start, out, *strides, chunks, bd, bt, N, tiles, num_warps=warps), error)
        except Exception as e:  # a design that does not compile at this size: reported, not fatal
            print(f"| {bd} | {bt} | {warps} | failed: {type(e).__name__}: {str(e)[:200]} | | |", flush=True)


if __name__ == "__main__":
    main()
