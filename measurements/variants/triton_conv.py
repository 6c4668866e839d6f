"""A candidate: train_gpt.py with the causal convolution from measurements/triton_conv.py on a GPU, benchmarked beside it.

    python3 measurements/variants/triton_conv.py train_gpt.py > /tmp/variants/triton_conv/train_gpt.py
    CONV_DESIGN=recompute python3 /tmp/variants/triton_conv/benchmark.py --train-only   # default: two_pass

The probe's source is written into the script (before the model), and the Mamba branch calls its convolution where the
input is on a GPU; on CPU the script's own (so tests/test_variants.py checks only that it still applies).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from variant_edit import probe_code, write_variant  # noqa: E402

OLD = "        xm = causal_conv1d(xm, self.conv_weight, self.conv_bias)\n"
NEW = ("        xm = (functools.partial(causal_conv1d_triton, design=os.environ.get(\"CONV_DESIGN\", \"two_pass\")) if xm.is_cuda\n"
       "              else causal_conv1d)(xm, self.conv_weight, self.conv_bias)\n")
BEFORE = "class HymbaMixer(nn.Module):\n"

EDITS = [(OLD, NEW), (BEFORE, probe_code("triton_conv.py") + "\n\n\n" + BEFORE)]

if __name__ == "__main__":
    write_variant("triton_conv", EDITS)
