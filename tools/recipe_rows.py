"""Use to measure one row of the recipe (docs/recipe.md): train_gpt.py with chosen rows switched back (CPU or GPU).

    OLD_ROWS=bigram,dt SEED=1337 <settings> python3 tools/recipe_rows.py

OLD_ROWS (comma-separated) switches these rows to their other choice for this run only:
  ortho   linear weights keep PyTorch's default initialisation instead of orthogonal (PR #599's)
  scales  the blocks' mixer and MLP output scales start at 1 instead of 1/sqrt(layer + 1) (PR #599's)
  dt      dt_proj's bias gives Mamba's log-uniform step sizes in [0.001, 0.1] instead of PyTorch's default (PR #599's)
  smear   SmearGate starts at sigmoid(-2), about 12%, instead of sigmoid(-3) (PR #599's)
  bigram  the BigramHash table moves to the other Adam group: to the embedding's (EMBED_LR) from the scalars'
          (SCALAR_LR, PR #599's), where train_gpt.py had it when this was measured (890f2c5), or back
  bf16    (CPU) the embedding tables stored in bf16 (their Adam state too), as build_model makes them on a GPU (PR #599's);
          the CPU path then reads them as fp32, so only the storage's precision differs, not the arithmetic
  fp32    on a GPU, the embedding tables stay fp32 (as before PR #599's dtype row), and with them the residual stream
  stream  (CPU) the residual stream rounded to bf16 wherever it is written (norm outputs, residual mixes and adds), as it
          is on a GPU when the tables are bf16 and the norms keep their input's dtype; the arithmetic stays fp32
Everything else is train_gpt.py as it stands (its settings from the environment, as for training).
"""
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where train_gpt.py is
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
    if "stream" in ROWS:
        tg.rms_norm = lambda x: bf16(F.rms_norm(x, (x.size(-1),)))
        tg.Block.forward = block_in_bf16
    for module in (m for m in model.modules() if isinstance(m, torch.nn.Embedding)):
        if "fp32" in ROWS:
            module.float()
        if "bf16" in ROWS:
            module.bfloat16()
    if "bf16" in ROWS:
        tg.Embedding.forward = lambda self, ids: F.embedding(ids, tg.grid_weight(self)).float()
    return model


def bf16(x):
    return x.bfloat16().float()


def block_in_bf16(self, x, x0, block_mask):
    """Block.forward with each tensor that the GPU would store in bf16 rounded to it."""
    x = bf16(self.resid_mix[0] * x + self.resid_mix[1] * x0)
    x = bf16(x + self.mixer_scale * bf16(self.mixer(tg.rms_norm(x), block_mask)))
    return bf16(x + self.mlp_scale * bf16(self.mlp(tg.rms_norm(x))))


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
