"""Use to retune FlexAttention (the script's fallback attention) for a new GPU or shape: times its kernel options.

    python3 tools/flex_configs.py [--json best.json]

Times FlexAttention at train_gpt.py's shape under several kernel_options, forward and backward apart.

The shape is one H200's share of the record's step: 2 sequences of 32,768 tokens, 8 query and 4 KV heads
of 64, causal sliding window of 1,024, bf16, q/k/v laid out as the model passes them ((b, t, h, d) seen
as (b, h, t, d)). Options prefixed fwd_ reach only the forward kernel, bwd_ only the backward, so the best
of each can be combined; --json writes that combination, for `tools/benchmark.py --flex-options`.
Times are per layer (the model runs 8); medians of CUDA-event timings after warm-up.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where train_gpt.py is
import train_gpt as tg  # noqa: E402  (the block mask, exactly as training makes it)
from benchmark import median_ms  # noqa: E402  (tools/benchmark.py, beside this file)

BATCH, HEADS, KV_HEADS, LENGTH, HEAD_DIM, WINDOW = 2, 8, 4, 32768, 64, 1024

FORWARD = [{}, {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64}, {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64},
           {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8}, {"fwd_num_stages": 2}, {"fwd_USE_TMA": True}]
BACKWARD = [dict(bwd_BLOCK_M1=m1, bwd_BLOCK_N1=n1, bwd_BLOCK_M2=m2, bwd_BLOCK_N2=n2, bwd_num_stages=s, bwd_num_warps=w)
            for m1, n1, m2, n2, s, w in [(64, 64, 64, 64, 3, 4), (32, 64, 64, 32, 3, 4), (64, 128, 128, 64, 2, 8),
                                         (32, 128, 128, 32, 3, 4), (64, 128, 128, 64, 3, 4), (64, 64, 64, 64, 2, 8)]]
BACKWARD.append({"bwd_USE_TMA": True})


def time_options(options: dict, q, k, v, mask) -> dict:
    from torch.nn.attention.flex_attention import flex_attention
    torch._dynamo.reset()
    flex = torch.compile(flex_attention, dynamic=False)
    grad = torch.randn_like(q)

    def forward():
        return flex(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=options or None)

    def forward_backward():
        torch.autograd.grad(forward(), (q, k, v), grad)

    t0 = time.perf_counter()
    forward_backward()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    fwd, both = median_ms(forward, 3, 10), median_ms(forward_backward, 3, 10)
    return dict(options=options, forward_ms=round(fwd, 3), backward_ms=round(both - fwd, 3), compile_s=round(compile_s, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the best forward and backward options, combined, here")
    args = parser.parse_args()
    torch.manual_seed(0)
    make = lambda heads: torch.randn(BATCH, LENGTH, heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    q, k, v = (make(h).requires_grad_() for h in (HEADS, KV_HEADS, KV_HEADS))
    mask = tg.flex_sliding_window_mask(LENGTH, WINDOW, q.device)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; per layer, {BATCH}x{LENGTH} tokens, window {WINDOW}")
    print("| options | forward ms | backward ms | first call s |\n|---|---|---|---|")
    rows = []
    for options in FORWARD + BACKWARD:
        try:
            row = time_options(options, q, k, v, mask)
        except Exception as error:  # a configuration the kernel cannot run (e.g. too much shared memory)
            row = dict(options=options, error=f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
        rows.append(row)
        print(f"| {json.dumps(options) if options else 'default'} | {row.get('forward_ms', '-')} | {row.get('backward_ms', '-')} | "
              f"{row.get('compile_s', row.get('error'))} |", flush=True)
    ok = [r for r in rows if "error" not in r]
    default = ok[0] if ok and not ok[0]["options"] else None
    best_fwd = min((r for r in rows[:len(FORWARD)] if "error" not in r), key=lambda r: r["forward_ms"])
    best_bwd = min(ok, key=lambda r: r["backward_ms"])
    best = {k: v for k, v in best_fwd["options"].items() if k.startswith("fwd_")}
    best.update({k: v for k, v in best_bwd["options"].items() if k.startswith("bwd_")})
    if default:
        saving = 8 * (default["forward_ms"] - best_fwd["forward_ms"] + default["backward_ms"] - best_bwd["backward_ms"])
        print(f"best forward {best_fwd['forward_ms']} ms, best backward {best_bwd['backward_ms']} ms per layer; "
              f"against the default: {saving:.2f} ms per 8-layer step")
    print("best options: " + json.dumps(best))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(best=best, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
