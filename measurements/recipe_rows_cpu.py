"""Issue 12's recipe rows one at a time, on a CPU: train_gpt.py with chosen rows put back as they were before.

    OLD_ROWS=bigram,dt SEED=1337 <settings> python measurements/recipe_rows_cpu.py

OLD_ROWS (comma-separated) undoes these rows of PR #599's recipe for this run only:
  ortho   linear weights keep PyTorch's default initialisation instead of orthogonal
  scales  the blocks' mixer and MLP output scales start at 1 instead of 1/sqrt(layer + 1)
  dt      dt_proj's bias gives Mamba's log-uniform step sizes in [0.001, 0.1] instead of PyTorch's default
  smear   SmearGate starts at sigmoid(-2), about 12%, instead of sigmoid(-3)
  bigram  the BigramHash table trains with the embedding (EMBED_LR) instead of the scalars (SCALAR_LR)
Everything else is train_gpt.py as it stands (its settings from the environment, as for training). The
bf16 embedding tables of the GPU path cannot be undone here: the CPU path is fp32 throughout.
"""
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

ROWS = set(filter(None, os.environ.get("OLD_ROWS", "").split(",")))
build_model, build_optimizers, orthogonal = tg.build_model, tg.build_optimizers, torch.nn.init.orthogonal_


def build(hp, kernels, device):
    if "ortho" in ROWS:
        torch.nn.init.orthogonal_ = lambda w, *args, **kwargs: w
    model = build_model(hp, kernels, device)
    torch.nn.init.orthogonal_ = orthogonal
    with torch.no_grad():
        for block in model.blocks:
            if "scales" in ROWS:
                block.mixer_scale.fill_(1.0)
                block.mlp_scale.fill_(1.0)
            if "dt" in ROWS:
                mixer = block.mixer
                dt = torch.exp(torch.rand(mixer.inner) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
                mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1
        if "smear" in ROWS and model.smear is not None:
            model.smear.gate.fill_(-2.0)
    return model


def optimizers(hp, model, run):
    opts = build_optimizers(hp, model, run)
    if "bigram" in ROWS and model.bigram is not None:
        adam, table = opts[0], model.bigram.table.weight  # groups: embeddings, scalars[, head]
        adam.param_groups[1]["params"] = [p for p in adam.param_groups[1]["params"] if p is not table]
        adam.param_groups[0]["params"].append(table)
    return opts


if __name__ == "__main__":
    tg.build_model, tg.build_optimizers = build, optimizers
    sys.exit(tg.main())
