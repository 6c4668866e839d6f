"""The table the kernel probes print (conv_configs.py, attention_timing.py): a row per candidate, its forward and its
forward + backward timed by the GPU kernels' own time (profiler) and by one call's (CUDA events), its results compared
with the first row's."""
import torch

from benchmark import gpu_kernels, median_ms


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
