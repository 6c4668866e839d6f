"""Use to price a change of the artifact's format: one run's weights packed with the embedding and/or head in fp16.

    python3 tools/export_variants.py RAW_WEIGHTS.pt   # settings from the environment, as for training

Prints the size and roundtrip BPB of each variant.

RAW_WEIGHTS is the raw state a training run saves before its export (`final_model.pt`: the EMA weights). Each
variant is packed as train_gpt.py packs the artifact, except that the named tensors are kept in fp16 instead of
int8; it prints the compressed size (without the few hundred bytes of recorded settings the real artifact adds)
and the BPB of the weights read back, scored as the roundtrip line scores.
"""
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where train_gpt.py is
import train_gpt as tg  # noqa: E402

VARIANTS = {"all int8 (default)": (), "tok_emb fp16": ("tok_emb.weight",), "lm_head fp16": ("lm_head.weight",),
            "tok_emb + lm_head fp16": ("tok_emb.weight", "lm_head.weight")}


def packed_variant(weights: dict, bits: int, fp16: tuple) -> dict:
    packed = tg.quantize_state_dict(weights, bits)
    for name in fp16:
        packed["quantized"].pop(name, None), packed["scales"].pop(name, None)
        packed["kept"][name] = weights[name].detach().cpu().half()
    return packed


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(print(__doc__) or 2)
    hp = tg.Hyperparameters.from_env()
    run = tg.setup_run(hp)
    kernels = tg.select_kernels(hp, run.device)
    data = tg.load_data(hp, run)
    raw = torch.load(sys.argv[1], map_location="cpu")
    weights = raw["model"] if "model" in raw else raw
    packs = {name: packed_variant(weights, hp.quant_bits, fp16) for name, fp16 in VARIANTS.items()}
    with ThreadPoolExecutor(len(packs)) as pool:  # zstd releases the GIL: the variants compress side by side
        sizes = dict(zip(packs, pool.map(lambda p: len(tg.compress(p, hp.zstd_level)), packs.values())))
    model = tg.build_model(hp, kernels, run.device)
    compiled = tg.maybe_compile(model, hp, run.device)
    print("| export | bytes_model | roundtrip val_bpb |\n|---|---|---|")
    for name, packed in packs.items():
        model.load_state_dict(tg.dequantize_state_dict(packed))
        loss, bpb = tg.evaluate_bpb(compiled, data, hp, run)
        print(f"| {name} | {sizes[name]:,} | {bpb:.4f} |", flush=True)


if __name__ == "__main__":
    main()
