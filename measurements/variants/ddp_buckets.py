"""A candidate: train_gpt.py with the model's graph split at DDP's gradient buckets again (dynamo's optimize_ddp on,
PyTorch's default), for the gain of one graph under DDP in the script (tenth session).

    python3 measurements/variants/ddp_buckets.py train_gpt.py > /tmp/variants/ddp_buckets/train_gpt.py

Under DDP, torch.compile by default splits the model's graph at DDP's gradient buckets (25 MB each), so that each
bucket's all-reduce can start while the rest of the backward runs. In the ninth session's two-GPU profile (with another
two-GPU job on the same GPUs) the compiled element-wise kernels took 20.0 ms a step against 16.1 on one GPU, in 711
launches against 609, while the all-reduces ran almost entirely after the backward anyway (0.04 of 0.95 ms beside
compute). The script therefore compiles one graph under DDP too; this variant puts the split back. The same model on one
GPU (the setting matters only under DDP).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from variant_edit import write_variant  # noqa: E402

START = "    torch._dynamo.config.optimize_ddp = False"  # the line, whatever its comment, goes

if __name__ == "__main__":
    source = Path(sys.argv[1]).read_text(encoding="utf-8")
    line = next((l for l in source.splitlines(keepends=True) if l.startswith(START)), START)
    write_variant("ddp_buckets", [(line, "")])
