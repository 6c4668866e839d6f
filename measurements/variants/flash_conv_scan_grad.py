"""A candidate: the three variants that gained, together (flash_attention, triton_conv, scan_grad_as_is), to time
their sum in one step; each one's own gain is its own variant's row.

    python3 measurements/variants/flash_conv_scan_grad.py train_gpt.py > /tmp/variants/flash_conv_scan_grad/train_gpt.py
"""
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from variant_edit import write_variant  # noqa: E402


def edits_of(name: str) -> list:
    spec = importlib.util.spec_from_file_location(f"variant_{name}", Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EDITS


if __name__ == "__main__":
    write_variant("flash_conv_scan_grad", [e for name in ("flash_attention", "triton_conv", "scan_grad_as_is") for e in edits_of(name)])
