"""Issue 12's recipe rows one at a time, on a CPU: train_gpt.py with chosen rows put back as they were before.

    OLD_ROWS=bigram,dt SEED=1337 <settings> python measurements/recipe_rows_cpu.py

OLD_ROWS (comma-separated) switches these rows to their other choice for this run only:
  ortho   linear weights keep PyTorch's default initialisation instead of orthogonal (PR #599's)
  scales  the blocks' mixer and MLP output scales start at 1 instead of 1/sqrt(layer + 1) (PR #599's)
  dt      dt_proj's bias gives Mamba's log-uniform step sizes in [0.001, 0.1] instead of PyTorch's default (PR #599's)
  smear   SmearGate starts at sigmoid(-2), about 12%, instead of sigmoid(-3) (PR #599's)
  bigram  the BigramHash table moves to the other Adam group: to the embedding's (EMBED_LR) from the scalars'
          (SCALAR_LR, PR #599's), where train_gpt.py had it when this was measured (890f2c5), or back
Everything else is train_gpt.py as it stands (its settings from the environment, as for training). The
bf16 embedding tables of the GPU path cannot be switched here: the CPU path is fp32 throughout.
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
        groups, table = opts[0].param_groups, model.bigram.table.weight  # Adam's groups: embeddings, scalars[, head]
        source = 0 if any(p is table for p in groups[0]["params"]) else 1
        groups[source]["params"] = [p for p in groups[source]["params"] if p is not table]
        groups[1 - source]["params"].append(table)
    return opts


if __name__ == "__main__":
    tg.build_model, tg.build_optimizers = build, optimizers
    sys.exit(tg.main())
