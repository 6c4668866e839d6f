"""A candidate for issue 11, written out by the session driver and benchmarked beside train_gpt.py as it stands:

    python3 measurements/variants/single_gemm_mamba.py train_gpt.py > /tmp/variants/single_gemm_mamba/train_gpt.py

The Mamba branch's projections as one plain matmul over all batch x length positions instead of a batched
matmul with the weight broadcast over the batch (the profile's matmuls rose by about 1 ms when the branch went
channel-major). The product is laid out (out, batch, length) and seen as (batch, out, length), positions still
contiguous, which is all the scan needs. Same values and gradients as train_gpt.py's function (checked in
float64 on the CPU: loss equal, gradients within 7e-18); its speed is for a GPU to say.
"""
import sys
from pathlib import Path

OLD = '''    """(out, in) @ (b, in, l) -> (b, out, l) in one batched matmul (torch.matmul would make it token-major, then transpose)."""
    return torch.bmm(weight.to(x.dtype).expand(x.size(0), -1, -1), x)'''
NEW = '''    """(out, in) @ (b, in, l) -> (b, out, l) as one matmul over all b*l positions, laid out (out, b, l): positions stay
    contiguous, as the scan reads them. Free when x is such a view or a token-major tensor's transpose."""
    b, i, l = x.shape
    return (weight.to(x.dtype) @ x.transpose(0, 1).reshape(i, b * l)).view(-1, b, l).transpose(0, 1)'''

source = Path(sys.argv[1]).read_text(encoding="utf-8")
if source.count(OLD) != 1:
    sys.exit("single_gemm_mamba: train_gpt.py's channel_major_linear is not the one this variant replaces")
sys.stdout.write(source.replace(OLD, NEW))
