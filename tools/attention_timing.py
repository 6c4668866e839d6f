"""Use to compare attention kernels on a new GPU or shape: FlashAttention-4 against FlexAttention at one layer's shape.

    python3 tools/attention_timing.py [--json results.json]

FlashAttention-4 is train_gpt's "flash" backend (the flash-attn-4 package's CuTe kernels), FlexAttention ("flex") as
the script compiles it.

Shape: one H200's share of the record's step, 2 sequences x 32,768 positions, 8 query and 4 key/value heads of 64,
window 1,024, bf16. Forward, and forward + backward, each inside torch.compile as in the model (the flash kernels as
the script's custom operators). Times per layer (the model runs 8): the GPU kernels' own time (from the profiler,
10 runs) and the wall-clock of one call (CUDA events). Each backend's output and gradients are compared with the
first row's, and that row's with the exact attention of the first 4,096 positions (train_gpt's reference).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where train_gpt.py is
import train_gpt as tg  # noqa: E402
from benchmark import gpu_kernels, median_ms  # noqa: E402  (tools/benchmark.py, beside this file)

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM, WINDOW = 2, 32768, 8, 4, 64, 1024


def kernel_ms(fn, runs: int = 10) -> float:
    """The GPU kernels' own time per call (their sum, gaps between them not counted)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in gpu_kernels(prof)) / 1000 / runs


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


TABLE_COLUMNS = ("forward, kernels ms | forward + backward, kernels ms | forward, one call ms | forward + backward, one call ms "
                 "| max rel. error against the first row |")


def time_candidate(name: str, forward, both, first: list | None) -> tuple[dict | None, list | None]:
    """One row of the table: forward and forward + backward timed by the kernels' own time and by one call's, their
    results compared with `first` (the first row's; these results if None), the row printed. Returns the row's
    figures (None where the candidate failed, e.g. out of registers or shared memory: reported, not fatal) and `first`."""
    try:
        results = [forward(), *both()]
        times = dict(forward_kernels_ms=kernel_ms(forward), total_kernels_ms=kernel_ms(both),
                     forward_ms=median_ms(forward, 3, 20), total_ms=median_ms(both, 3, 20))
    except Exception as e:
        print(f"| {name} | failed: {type(e).__name__}: {str(e)[:300]} | | | | |", flush=True)
        return None, first
    first = first or results
    row = {key: round(ms, 4) for key, ms in times.items()} | dict(error=max(map(relative_error, results, first)))
    print(f"| {name} | " + " | ".join(f"{ms:.4f}" for ms in times.values()) + f" | {row['error']:.2e} |", flush=True)
    return row, first


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = lambda heads: (BATCH, LENGTH, heads, HEAD_DIM)
    q, k, v = (torch.randn(shape(h), device="cuda", dtype=torch.bfloat16).requires_grad_() for h in (HEADS, KV_HEADS, KV_HEADS))
    grad = torch.randn(shape(HEADS), device="cuda", dtype=torch.bfloat16)
    rows, first = [], None
    print(f"| attention | {TABLE_COLUMNS}\n|---|---|---|---|---|---|")
    for name, attn in (("flash", tg.sliding_window_attention_flash), ("flex", tg.sliding_window_attention_flex)):
        mask = tg.flex_sliding_window_mask(LENGTH, WINDOW, q.device) if name == "flex" else None
        compiled = torch.compile(lambda q, k, v: attn(q, k, v, WINDOW, mask), dynamic=False)
        forward = lambda: compiled(q, k, v)
        had_first = first is not None
        row, first = time_candidate(name, forward, lambda: torch.autograd.grad(forward(), [q, k, v], grad), first)
        rows += [dict(attention=name) | row] if row else []
        if row and not had_first:  # the first row that ran, against the exact attention on a short stretch
            short = [t[:, :4096].detach().clone().requires_grad_() for t in (q, k, v)]
            exact = tg.sliding_window_attention_reference(*short, WINDOW)
            exact_grads = torch.autograd.grad(exact, short, grad[:, :4096])
            short_mask = tg.flex_sliding_window_mask(4096, WINDOW, q.device) if name == "flex" else None
            mine = attn(*short, WINDOW, short_mask)
            mine_grads = torch.autograd.grad(mine, short, grad[:, :4096])
            print(f"{name} against the reference on 4,096 positions: max rel. error "
                  f"{max(map(relative_error, [mine, *mine_grads], [exact, *exact_grads])):.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
