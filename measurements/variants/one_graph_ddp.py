"""A candidate: train_gpt.py with the model compiled as one graph under DDP too (dynamo's optimize_ddp off).

    python3 measurements/variants/one_graph_ddp.py train_gpt.py > /tmp/variants/one_graph_ddp/train_gpt.py

Under DDP, torch.compile splits the model's graph at DDP's gradient buckets (25 MB each), so that each bucket's
all-reduce can start while the rest of the backward runs. In the ninth session's two-GPU profile (bench_2gpu, with
another two-GPU job on the same GPUs) the compiled element-wise kernels took 20.0 ms a step against 16.1 on one GPU,
in 711 launches against 609, while the all-reduces ran almost entirely after the backward anyway (0.04 of 0.95 ms
beside compute). One graph fuses as on one GPU; DDP's hooks then all fire at the end of the backward. The same model
on one GPU (the setting matters only under DDP).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from variant_edit import write_variant  # noqa: E402

OLD = "    torch._dynamo.config.cache_size_limit = 64"  # the line, whatever its comment: the new one goes before it
NEW = "    torch._dynamo.config.optimize_ddp = False  # one graph under DDP: its split at the buckets cost fusion (README)\n" + OLD

if __name__ == "__main__":
    write_variant("one_graph_ddp", [(OLD, NEW)])
