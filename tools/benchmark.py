"""Use before and after a change to train_gpt.py's speed: times its step on a GPU at the record's per-GPU shape.

Times the hot paths on one GPU (or on each, under torchrun) and projects the 8-GPU record. Run from anywhere:

    python3 tools/benchmark.py                 # the backends train_gpt.py would pick (env vars as for training)
    python3 tools/benchmark.py --warmup 3 --iters 10 --train-only   # the training step alone: compare versions
    python3 tools/benchmark.py --ablate        # then again with each fast backend switched off, one at a time
    python3 tools/benchmark.py --profile --profile-rows 60   # and the CUDA kernels that take the step's time
    python3 tools/benchmark.py --flex-options '{"bwd_num_warps": 4}'   # with FlexAttention kernel options
    python3 tools/benchmark.py --compile-mode reduce-overhead          # the model compiled in another mode (CUDA graphs)
    python3 tools/benchmark.py --inductor coordinate_descent_tuning=True   # a torch._inductor.config setting (repeatable)
    python3 tools/benchmark.py --tokens-from DIR/fineweb_train_000000.bin   # a batch of real text, not random tokens
    torchrun --standalone --nproc_per_node=2 tools/benchmark.py --train-only --profile   # each GPU this shape, DDP

Under torchrun every GPU runs the record's per-GPU step with the model wrapped in DDP as train_gpt.py wraps
it, and Muon shares its updates; rank 0 prints. --profile then also says how much of the communication
kernels' time ran while compute kernels ran too (hidden) and how much did not (exposed).

Times (median of CUDA-event timings after warm-up; with --iters 50 or more, drift_ms also compares the
last tenth of the timed steps with the first): the full training step (forward, backward, Muon
and Adam, the weight average's sample amortised over SWA_EVERY), alone and back to back (queued with no sync between them), the TTT step (forward, backward, AdamW on this GPU's share of
a chunk) and the scoring pass. Random tokens unless --tokens-from: the work per step is the same but for
the embedding's backward, which sums the gradients of repeated tokens (real text repeats many).
On one GPU, communication is not measured; the projections assume every GPU does this GPU's work.
"""

import argparse
import ast
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where train_gpt.py is
import train_gpt as tg  # noqa: E402

PEAK_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16, the datasheet figure
FINEWEB_VAL_TOKENS = 62_021_846
RECORD_GPUS = 8


class FixedBatch:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def next_batch(self):
        return self.x, self.y


def step_times_ms(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def median_ms(fn, warmup: int, iters: int) -> float:
    return statistics.median(step_times_ms(fn, warmup, iters))


def drift_ms(times: list[float]) -> float | None:
    """The median of the last tenth of the timed steps less that of the first tenth (from 50 steps on): a GPU whose
    clocks fall under a sustained load, as in a training run, shows it here and not in a short benchmark."""
    if len(times) < 50:
        return None
    tenth = len(times) // 10
    return round(statistics.median(times[-tenth:]) - statistics.median(times[:tenth]), 2)


def back_to_back_ms(fn, iters: int) -> float:
    """The mean of `iters` calls queued one after another, with no sync between them. Against the synced median it
    shows whether the GPU waits for the CPU at a step's start (the training loop syncs once a step)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def inductor_settings(pairs: list[str]) -> dict:
    """NAME=VALUE pairs as torch._inductor.config settings: VALUE a Python literal (True, 4, "x") or else a string.
    A NAME that config does not have is an error, not a silently ignored typo."""
    import torch._inductor.config as config
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not hasattr(config, name):
            raise SystemExit(f"--inductor {pair}: not NAME=VALUE with NAME a torch._inductor.config setting")
        try:
            settings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[name] = value
    return settings


def flops_per_token(hp: tg.Hyperparameters, model: tg.HymbaGPT) -> float:
    """Forward+backward: 6 per weight of every matmul, plus attention's scores and values over the window."""
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 4 * min(hp.sliding_window, hp.train_seq_len) * hp.model_dim * hp.num_layers
    return 6 * matmul_weights + 3 * attention


KERNEL_GROUPS = [  # (group, substrings of CUDA kernel names), first match wins
    ("selective scan (fused or mamba-ssm)", ("selective_scan", "scan_forward", "scan_backward")),
    ("attention (flex / flash)", ("flex", "flash", "fmha", "attention")),
    ("matmul", ("gemm", "nvjet", "cutlass", "sm90_xmma", "matmul", "_mm_")),
    ("compiled fused element-wise / reductions", ("triton_",)),
    ("communication", ("nccl",)),
]


def kernel_intervals(prof) -> list[tuple[float, float, str]]:
    """(start, end, name) of every GPU kernel in the profile, in microseconds."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    return [(e["ts"], e["ts"] + e["dur"], e["name"]) for e in events if e.get("cat") == "kernel"]


def communication_overlap(kernels: list[tuple[float, float, str]], steps: int) -> str:
    """How much of the communication (NCCL) kernels' time ran while a compute kernel ran on another stream. NCCL
    kernels also count the time they wait for the other ranks, so 'exposed' is an upper bound of what they cost."""
    compute = sorted((a, b) for a, b, name in kernels if "nccl" not in name.lower())
    merged = []  # the compute kernels' union, as disjoint intervals
    for a, b in compute:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    comm = [(a, b, name) for a, b, name in kernels if "nccl" in name.lower()]
    total = sum(b - a for a, b, _ in comm)
    hidden = sum(max(0.0, min(b, mb) - max(a, ma)) for a, b, _ in comm for ma, mb in merged if ma < b and mb > a)
    names = sorted({name.split("(")[0] for _, _, name in comm})
    return (f"communication: {len(comm) // steps} NCCL kernels per step, {total / 1000 / steps:.2f} ms per step, of which "
            f"{hidden / 1000 / steps:.2f} ms ran beside compute (hidden) and {(total - hidden) / 1000 / steps:.2f} ms did not "
            f"(exposed); kernels: {', '.join(names)}")


def gpu_kernels(prof) -> list:
    """A profile's GPU kernels, averaged by name; not annotations such as Optimizer.step, which span kernels."""
    return [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation]


def profile_train_step(train_step, steps: int = 3, rows: int = 30) -> str:
    """The kernels that take the step's GPU time, grouped, and how much of the step the GPU is busy; on several GPUs,
    how much of the communication hides behind compute."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(steps):
            train_step()
        end.record()
        torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / steps
    kernels = gpu_kernels(prof)
    groups: dict[str, list] = {}
    for e in kernels:
        group = next((g for g, keys in KERNEL_GROUPS if any(k in e.key.lower() for k in keys)), "other")
        groups.setdefault(group, []).append(e)
    busy_ms = sum(e.self_device_time_total for e in kernels) / 1000 / steps
    lines = [f"GPU busy {busy_ms:.2f} ms of a {wall_ms:.2f} ms step (profiled; the rest is the GPU waiting for the CPU)",
             "| kernels | ms per step | share of busy | launches per step |", "|---|---|---|---|"]
    for group, events in sorted(groups.items(), key=lambda kv: -sum(e.self_device_time_total for e in kv[1])):
        ms = sum(e.self_device_time_total for e in events) / 1000 / steps
        lines.append(f"| {group} | {ms:.2f} | {ms / busy_ms:.1%} | {sum(e.count for e in events) // steps} |")
    if "communication" in groups:
        lines.append(communication_overlap(kernel_intervals(prof), steps))
    lines.append("")
    lines.append(prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70))
    return "\n".join(lines)


def bench(hp: tg.Hyperparameters, run: tg.Run, seqs: int, warmup: int, iters: int, profile_rows: int = 0,
          train_only: bool = False, shard: str | None = None) -> dict:
    device = run.device
    torch.manual_seed(0)
    kernels = tg.select_kernels(hp, device)
    model = tg.build_model(hp, kernels, device)
    compiled = tg.maybe_compile(model, hp, device)
    trainer = DistributedDataParallel(compiled, device_ids=[device.index]) if run.world_size > 1 else compiled  # as train_gpt
    hp.grad_accum_steps = 1
    if shard:  # real text: its repeated tokens make the embedding's backward do other work than uniform ids
        tokens = torch.from_numpy(tg.load_shard(Path(shard), hp.vocab_size)[:seqs * hp.train_seq_len + 1].astype("int64"))
        x, y = (t.view(seqs, hp.train_seq_len).to(device) for t in (tokens[:-1], tokens[1:]))
    else:
        x = torch.randint(0, hp.vocab_size, (seqs, hp.train_seq_len), device=device)
        y = torch.randint(0, hp.vocab_size, (seqs, hp.train_seq_len), device=device)
    optimizers = tg.build_optimizers(hp, model, run)
    average = tg.WeightAverage(lr_below=1.0, every=1)
    loader = FixedBatch(x, y)

    def train_step():
        tg.train_step(trainer, loader, optimizers, hp, run)

    torch.cuda.reset_peak_memory_stats()
    first = time.perf_counter()
    train_step()  # the first step compiles
    torch.cuda.synchronize()
    first_step_s = time.perf_counter() - first
    times = step_times_ms(train_step, warmup, iters)
    train_ms = statistics.median(times)
    queued_ms = back_to_back_ms(train_step, iters)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    if profile_rows:  # 0: no profile
        report = profile_train_step(train_step, rows=profile_rows)
        if run.rank == 0:
            print(report, flush=True)
    average_ms = median_ms(lambda: average.update(model, 1, 0.0), 2, 5) / hp.swa_every
    tokens = seqs * hp.train_seq_len
    step_ms = train_ms + average_ms
    result = dict(world_size=run.world_size, backends=kernels.names, compile=hp.compile, first_step_s=round(first_step_s, 1), train_step_ms=round(step_ms, 2),
                  back_to_back_ms=round(queued_ms + average_ms, 2), drift_ms=drift_ms(times),
                  tokens_per_s=round(tokens / step_ms * 1000), peak_gib=round(peak_gib, 2),
                  mfu=round(flops_per_token(hp, model) * tokens / (step_ms / 1000) / PEAK_BF16_FLOPS, 4),
                  projected_steps_600s=int(600_000 / step_ms), ttt_step_ms=None, score_ms=None, projected_ttt_eval_s=None)
    if train_only:
        return result

    ttt_opt = torch.optim.AdamW(model.parameters(), lr=hp.ttt_lr, betas=(0.9, 0.999), weight_decay=0.01)

    def ttt_step():
        with tg.autocast(device):
            loss = compiled(x, y)
        loss.backward()
        ttt_opt.step()
        ttt_opt.zero_grad(set_to_none=True)

    ttt_ms = median_ms(ttt_step, warmup, iters)

    @torch.no_grad()
    def score():
        with tg.autocast(device):
            compiled(x, y, reduction="none")

    score_ms = median_ms(score, warmup, iters)

    chunks = math.ceil((FINEWEB_VAL_TOKENS - 1) / hp.ttt_chunk_tokens)
    per_gpu_chunk_scale = hp.ttt_chunk_tokens / RECORD_GPUS / tokens  # this GPU's share of a chunk, in benchmark batches
    ttt_eval_s = chunks * per_gpu_chunk_scale * (score_ms + hp.ttt_epochs * ttt_ms) / 1000
    return dict(result, ttt_step_ms=round(ttt_ms, 2), score_ms=round(score_ms, 2), projected_ttt_eval_s=round(ttt_eval_s, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqs", type=int, default=2, help="sequences per GPU per step (record: 2 of 32768)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--ablate", action="store_true", help="also time with each fast backend switched off")
    parser.add_argument("--profile", action="store_true", help="print where the first configuration's step goes")
    parser.add_argument("--profile-rows", type=int, default=30, help="the profile's table: this many busiest kernels")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--train-only", action="store_true", help="time the training step only (no TTT step, no scoring)")
    parser.add_argument("--tokens-from", metavar="SHARD", help="a train shard whose first tokens are the batch (default: "
                        "uniformly random tokens)")
    parser.add_argument("--compile-mode", help="torch.compile's mode for the model, e.g. reduce-overhead (CUDA graphs); "
                        "train_gpt.py uses the default")
    parser.add_argument("--inductor", action="append", default=[], metavar="NAME=VALUE", help="a torch._inductor.config "
                        "setting for this run (a Python literal, else a string), e.g. coordinate_descent_tuning=True")
    parser.add_argument("--flex-options", help="JSON kernel_options for FlexAttention, to try options that "
                        "tools/flex_configs.py found, instead of train_gpt.py's own")
    args = parser.parse_args()
    for name, value in inductor_settings(args.inductor).items():
        setattr(torch._inductor.config, name, value)
    if args.flex_options:
        flex, options = tg.compiled_flex_attention(), json.loads(args.flex_options)
        tg.compiled_flex_attention = lambda: functools.partial(flex, kernel_options=options)
    if args.compile_mode:
        maybe_compile = tg.maybe_compile

        def compile_in_mode(module, hp, device):  # train_gpt's compile settings, then the model compiled in that mode
            default = maybe_compile(module, hp, device)
            return module if default is module else torch.compile(module, dynamic=False, mode=args.compile_mode)
        tg.maybe_compile = compile_in_mode
    hp = tg.Hyperparameters.from_env()
    rank, world_size, local_rank = (int(os.environ.get(k, "0")) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    run = tg.Run(rank, max(world_size, 1), torch.device("cuda", local_rank), None)
    torch.cuda.set_device(run.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # as train_gpt.setup_run
    if run.world_size > 1:
        dist.init_process_group("nccl", device_id=run.device)
    configs = [hp]
    if args.ablate:
        chosen = tg.select_kernels(hp, run.device).names
        for op, name in chosen.items():
            if name != "reference":
                configs.append(dataclasses.replace(hp, **{f"{op}_backend": "reference"}))
        if hp.compile:
            configs.append(dataclasses.replace(hp, compile=False))
    rows = []
    for i, config in enumerate(configs):
        profile_rows = args.profile_rows if args.profile and i == 0 else 0  # the first configuration's profile only
        result = bench(dataclasses.replace(config), run, args.seqs, args.warmup, args.iters, profile_rows,
                       args.train_only or run.world_size > 1, args.tokens_from)  # TTT and scoring: one GPU's work
        rows.append(result)
        run.log(json.dumps(result))
        if args.json and run.rank == 0:  # after every configuration, so that a run cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=2)
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    if run.world_size > 1:
        dist.destroy_process_group()
    if run.rank != 0:
        return
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.seqs}x{hp.train_seq_len} tokens per step"
          + (f" on each of {run.world_size} GPUs (DDP)" if run.world_size > 1 else "")
          + (f", FlexAttention kernel_options {args.flex_options}" if args.flex_options else "")
          + (f", compile mode {args.compile_mode}" if args.compile_mode else "")
          + (f", inductor {' '.join(args.inductor)}" if args.inductor else ""))
    header = ("| scan | attn | compile | first step s | train step ms | back to back ms | tokens/s | peak GiB | MFU | TTT step ms | "
              "score ms | steps in 600 s | TTT eval s (8 GPUs) |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        b = r["backends"]
        print(f"| {b['scan']} | {b['attn']} | {int(r['compile'])} | {r['first_step_s']} | {r['train_step_ms']} | {r['back_to_back_ms']} | "
              f"{r['tokens_per_s']:,} | {r['peak_gib']} | {r['mfu']:.1%} | {r['ttt_step_ms']} | {r['score_ms']} | "
              f"{r['projected_steps_600s']} | {r['projected_ttt_eval_s']} |")


if __name__ == "__main__":
    main()
